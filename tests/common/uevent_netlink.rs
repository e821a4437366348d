//! The userspace ends of the kernel uevent netlink for tests: a raw
//! `NETLINK_KOBJECT_UEVENT` socket on an automatic (non-kernel) port, as a
//! forger or unprivileged sender has, and polling a libudev monitor. Use
//! them inside a fresh network namespace (see [`super::netns`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// A `NETLINK_KOBJECT_UEVENT` socket bound to a port the kernel picks
/// (never 0, the kernel's own), in no multicast group.
pub fn userspace_uevent_socket() -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .expect("netlink socket");
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).expect("bind");
    fd
}

/// Polls a non-blocking libudev monitor every 10 ms until an event arrives
/// or `wait` ends.
pub fn poll_monitor(monitor: &udev::MonitorSocket, wait: Duration) -> Option<udev::Event> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(event) = monitor.iter().next() {
            return Some(event);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The value of property `key` of a libudev event (lossy UTF-8), empty
/// when it has none.
pub fn udev_property(event: &udev::Event, key: &str) -> String {
    event
        .property_value(key)
        .map(|value| value.to_string_lossy().into_owned())
        .unwrap_or_default()
}
