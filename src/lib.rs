//! mdevreg: a registry of Linux mediated-device (mdev) parent devices.
//!
//! Data path: sources (`sysfs`, `netlink` + `uevent`, D-Bus requests) feed
//! the pure `registry`; its events go to the sinks (D-Bus signals and objects
//! in `dbus`, uevent emission in `emit`, the state files in `persist`).

pub mod boot;
pub mod boundary;
pub mod bus_host;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dbus;
pub mod emit;
pub mod label;
pub mod logging;
pub mod mdevctl_json;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod nvidia_vfio;
pub mod paths;
pub mod persist;
pub mod registry;
pub mod report;
pub mod shared_str;
pub mod synth_uevent;
pub mod sysfs;
#[cfg(test)]
pub(crate) mod test_support;
pub mod uevent;
pub mod uevent_writer;
pub mod vendor_watch;
pub mod wait;
