//! Helpers shared by the integration tests; each test crate uses a subset.
#![allow(dead_code)]

pub mod bare_reader;
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
pub mod socket_proxy;
pub mod sysfs_fixture;
pub mod tree_ops;
pub mod udevd;
pub mod uevent_netlink;

/// The unprivileged uid (and gid) that tests drop to through `setpriv`.
pub const NOBODY: u32 = 65534;

/// A command running `program`: as root, or (with `as_nobody`) as uid/gid
/// [`NOBODY`] without supplementary groups, through `setpriv`.
pub fn command_as(program: &str, as_nobody: bool) -> std::process::Command {
    if as_nobody {
        let mut command = std::process::Command::new("setpriv");
        command
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "--", program]);
        command
    } else {
        std::process::Command::new(program)
    }
}
