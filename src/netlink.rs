//! The only socket code of mdevreg: a listener for kernel uevents on
//! NETLINK_KOBJECT_UEVENT group 1 (trust-checked by [`accept_kernel`]), an
//! emitter that injects events through the kernel or broadcasts them in the
//! libudev format on group 2, and SEQNUM gap detection.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_KOBJECT_UEVENT, Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, NetlinkAddr};
use tokio::io::unix::AsyncFd;

use crate::uevent::{
    accept_kernel, encode_injection, encode_libudev, Credentials, Reject, Uevent,
    INJECTION_MSG_TYPE, NLMSG_HDR_BYTES, NLM_F_ACK, NLM_F_REQUEST,
};

/// `nl_groups` mask of the kernel's uevent group (group 1).
pub const KERNEL_GROUP_MASK: u32 = crate::uevent::KERNEL_GROUP_MASK;
/// `nl_groups` mask of udevd's libudev-format group (group 2).
pub const LIBUDEV_GROUP_MASK: u32 = 2;
/// Default receive buffer of the listener, so that boot-time bursts of
/// uevents are not dropped (udevd uses 128 MiB; mdevreg reads faster).
pub const DEFAULT_RECEIVE_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Largest datagram read; a kernel uevent is at most its header plus 2048
/// bytes of environment. Longer datagrams are rejected as truncated.
pub const MAX_DATAGRAM_BYTES: usize = 8192;

/// `NLMSG_ERROR`: the type of the kernel's acknowledgement.
const NLMSG_ERROR: u16 = 2;

/// What one receive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvOutcome {
    /// A kernel uevent that passed the trust check.
    Event(Uevent),
    /// A message that failed the trust check; count it, log at debug level.
    Rejected(Reject),
    /// The receive buffer overflowed (`ENOBUFS`): events were lost, rescan.
    Overflow,
}

/// A NETLINK_KOBJECT_UEVENT socket in the kernel group, with `SO_PASSCRED`,
/// non-blocking and registered with the tokio reactor of the caller.
pub struct UeventListener {
    socket: AsyncFd<Socket>,
    datagram: Box<[u8]>,
}

impl UeventListener {
    /// Opens a listener with [`DEFAULT_RECEIVE_BUFFER_BYTES`]. Must be called
    /// inside a tokio runtime with I/O enabled.
    pub fn open() -> io::Result<Self> {
        Self::with_receive_buffer(DEFAULT_RECEIVE_BUFFER_BYTES)
    }

    /// Opens a listener asking for a receive buffer of `bytes` (forced past
    /// `net.core.rmem_max` when the process has CAP_NET_ADMIN; the kernel
    /// doubles the value and enforces a small minimum).
    pub fn with_receive_buffer(bytes: usize) -> io::Result<Self> {
        let fd = uevent_socket(KERNEL_GROUP_MASK)?;
        socket::setsockopt(&fd, sockopt::PassCred, &true)?;
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &bytes).is_err() {
            socket::setsockopt(&fd, sockopt::RcvBuf, &bytes)?;
        }
        // Registering outside a runtime would panic; report it instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "UeventListener needs a tokio runtime with I/O enabled",
            ));
        }
        // SAFETY: the socket is moved into the AsyncFd, which keeps it open
        // until the AsyncFd is dropped, and Socket::as_raw_fd always returns
        // that same descriptor.
        let socket = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self {
            socket,
            datagram: vec![0; MAX_DATAGRAM_BYTES].into_boxed_slice(),
        })
    }

    /// The receive buffer size the kernel granted (`SO_RCVBUF`).
    pub fn receive_buffer_bytes(&self) -> io::Result<usize> {
        Ok(socket::getsockopt(self.socket.get_ref(), sockopt::RcvBuf)?)
    }

    /// The netlink port id the kernel assigned to this socket.
    pub fn port(&self) -> io::Result<u32> {
        let address: NetlinkAddr = socket::getsockname(self.socket.get_ref().as_raw_fd())?;
        Ok(address.pid())
    }

    /// Waits for the next message and trust-checks it.
    pub async fn recv(&mut self) -> io::Result<RecvOutcome> {
        loop {
            let mut ready = self.socket.readable().await?;
            let datagram = &mut self.datagram;
            match ready.try_io(|fd| receive_one(fd.get_ref(), datagram)) {
                Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> io::Result<Option<RecvOutcome>> {
        loop {
            match receive_one(self.socket.get_ref(), &mut self.datagram) {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

/// A non-blocking NETLINK_KOBJECT_UEVENT socket bound to a kernel-assigned
/// port and the multicast `groups` (0 for none).
fn uevent_socket(groups: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_KOBJECT_UEVENT)?;
    socket.set_non_blocking(true)?;
    socket.bind(&SocketAddr::new(0, groups))?;
    Ok(socket)
}

/// One `recvmsg` and the trust check of what it returned.
fn receive_one(fd: &Socket, datagram: &mut [u8]) -> io::Result<RecvOutcome> {
    let mut control = nix::cmsg_space!(nix::libc::ucred);
    let mut iov = [IoSliceMut::new(datagram)];
    let message = match socket::recvmsg::<NetlinkAddr>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(message) => message,
        // The kernel dropped messages for lack of buffer space.
        Err(Errno::ENOBUFS) => return Ok(RecvOutcome::Overflow),
        Err(error) => return Err(error.into()),
    };
    let length = message.bytes;
    let truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
    let (sender_port, groups) = message
        .address
        .map_or((0, 0), |address| (address.pid(), address.groups()));
    // A cut control buffer (MSG_CTRUNC) leaves no trustworthy credentials.
    let credentials = message.cmsgs().ok().and_then(|mut messages| {
        messages.find_map(|control| match control {
            ControlMessageOwned::ScmCredentials(c) => Some(Credentials {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            }),
            _ => None,
        })
    });
    if truncated {
        return Ok(RecvOutcome::Rejected(Reject::Truncated));
    }
    let bytes = datagram.get(..length).unwrap_or_default();
    Ok(
        match accept_kernel(sender_port, groups, credentials, bytes) {
            Ok(event) => RecvOutcome::Event(event),
            Err(reject) => RecvOutcome::Rejected(reject),
        },
    )
}

/// A gap in the kernel's SEQNUM sequence: events `expected..got` were not
/// received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub got: u64,
}

impl Gap {
    /// How many sequence numbers were skipped.
    pub fn missed(&self) -> u64 {
        self.got - self.expected
    }
}

/// Detects gaps in the SEQNUMs of received kernel events.
///
/// The kernel numbers events from one global counter, but does not deliver
/// every event to every network namespace (events of network devices and
/// injected events stay in their namespace), so a gap means "maybe lost":
/// the answer is a rescan, which is always safe.
#[derive(Debug, Clone, Default)]
pub struct SeqnumTracker {
    last: Option<u64>,
}

impl SeqnumTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `seqnum`; returns the gap before it, if any. A number at or
    /// below the last one (a replay or a counter reset) restarts tracking.
    pub fn observe(&mut self, seqnum: u64) -> Option<Gap> {
        let gap = match self.last {
            Some(last) if seqnum > last.saturating_add(1) => Some(Gap {
                expected: last + 1,
                got: seqnum,
            }),
            _ => None,
        };
        self.last = Some(seqnum);
        gap
    }

    /// Forgets the last number (after an overflow, before a rescan).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The last SEQNUM observed.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// Sends uevents: by kernel injection (unicast to port 0) or as libudev
/// messages on group 2. Its socket joins no group, so it only ever receives
/// the kernel's acknowledgements. All calls are non-blocking: the kernel
/// handles an injection inside `sendto` and queues the acknowledgement before
/// returning.
pub struct UeventEmitter {
    socket: Socket,
    next_seq: u32,
}

impl UeventEmitter {
    pub fn open() -> io::Result<Self> {
        let socket = uevent_socket(0)?;
        Ok(Self {
            socket,
            next_seq: 1,
        })
    }

    /// Has the kernel number `event` and broadcast it on group 1 of this
    /// network namespace, as if it were its own (SPEC §1.4). `event` must not
    /// carry SEQNUM. Fails with `EPERM` without CAP_SYS_ADMIN over the network
    /// namespace's user namespace, `InvalidInput` for an unencodable event.
    pub fn inject(&mut self, event: &Uevent) -> io::Result<()> {
        let seq = self.take_seq();
        let message = encode_injection(event, seq)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        self.send_and_wait_ack(&message, seq)
    }

    /// Tells whether [`inject`](Self::inject) is permitted, exactly, without
    /// broadcasting anything: it sends an injection too large for the kernel,
    /// which checks the capability first (`EPERM`) and the size second
    /// (`EINVAL`). The kernel draws a SEQNUM before the size check, so every
    /// listener sees a gap of one. Kernels before 4.18 refuse with
    /// `ECONNREFUSED` (no injection support): reported as not permitted.
    pub fn probe_injection(&mut self) -> io::Result<bool> {
        let seq = self.take_seq();
        let mut message = Vec::with_capacity(2100);
        message.extend_from_slice(&[0; NLMSG_HDR_BYTES]);
        message.extend_from_slice(b"change@/devices/virtual/mdevreg/probe\0MDEVREG_PROBE=");
        message.resize(2100 - 1, b'x');
        message.push(0);
        let header = nlmsghdr_bytes(message.len() as u32, seq);
        message[..NLMSG_HDR_BYTES].copy_from_slice(&header);
        match self.send_and_wait_ack(&message, seq) {
            Err(error) if error.raw_os_error() == Some(nix::libc::EINVAL) => Ok(true),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(nix::libc::EPERM) | Some(nix::libc::ECONNREFUSED)
                ) =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
            Ok(()) => Err(io::Error::other(
                "the kernel accepted an oversized injection probe",
            )),
        }
    }

    /// Multicasts `event` in the libudev format on group 2, where libudev
    /// monitors listen (SPEC §1.5). Needs CAP_NET_ADMIN (`EPERM` otherwise).
    /// `event` must carry SUBSYSTEM and a non-zero SEQNUM.
    pub fn broadcast_libudev(&self, event: &Uevent, tags: &[&str]) -> io::Result<()> {
        let message = encode_libudev(event, tags)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let group = NetlinkAddr::new(0, LIBUDEV_GROUP_MASK);
        match socket::sendto(
            self.socket.as_raw_fd(),
            &message,
            &group,
            MsgFlags::MSG_DONTWAIT,
        ) {
            // Like systemd: no listener in the group is not a failure.
            Ok(_) | Err(Errno::ECONNREFUSED) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Sends `message` to the kernel and reads its acknowledgement for `seq`.
    fn send_and_wait_ack(&self, message: &[u8], seq: u32) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        socket::sendto(fd, message, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut reply = [0u8; 256];
        loop {
            // MSG_TRUNC: an error reply echoes our whole message; the status
            // and the echoed header are in the first 36 bytes.
            let length = match socket::recv(fd, &mut reply, MsgFlags::MSG_DONTWAIT) {
                Ok(length) => length,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(io::Error::other(
                        "the kernel did not acknowledge the uevent injection",
                    ))
                }
                Err(error) => return Err(error.into()),
            };
            if let Some(status) = ack_status(reply.get(..length).unwrap_or_default(), seq) {
                return match status {
                    0 => Ok(()),
                    errno => Err(io::Error::from_raw_os_error(errno.saturating_neg())),
                };
            }
            // A stale acknowledgement of an earlier request: read on.
        }
    }
}

fn nlmsghdr_bytes(len: u32, seq: u32) -> [u8; NLMSG_HDR_BYTES] {
    let mut header = [0u8; NLMSG_HDR_BYTES];
    header[0..4].copy_from_slice(&len.to_ne_bytes());
    header[4..6].copy_from_slice(&INJECTION_MSG_TYPE.to_ne_bytes());
    header[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    header[8..12].copy_from_slice(&seq.to_ne_bytes());
    header
}

/// The status of an `NLMSG_ERROR` reply to request `seq` (0 or `-errno`).
fn ack_status(reply: &[u8], seq: u32) -> Option<i32> {
    let word = |at: usize| -> Option<[u8; 4]> { reply.get(at..at + 4)?.try_into().ok() };
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let status = i32::from_ne_bytes(word(16)?);
    // The echoed request header follows the status; its seq is at 16+4+8.
    let echoed_seq = u32::from_ne_bytes(word(28)?);
    (echoed_seq == seq).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_seqnum_tracker_gaps() {
        let mut tracker = SeqnumTracker::new();
        assert_eq!(tracker.observe(10), None);
        assert_eq!(tracker.observe(11), None);
        assert_eq!(
            tracker.observe(14),
            Some(Gap {
                expected: 12,
                got: 14
            })
        );
        assert_eq!(tracker.observe(14).map(|gap| gap.missed()), None);
        assert_eq!(tracker.observe(3), None);
        assert_eq!(tracker.observe(4), None);
        tracker.reset();
        assert_eq!(tracker.observe(100), None);
        assert_eq!(tracker.last(), Some(100));
        assert_eq!(tracker.observe(102).map(|gap| gap.missed()), Some(1));
        assert_eq!(
            tracker.observe(u64::MAX),
            Some(Gap {
                expected: 103,
                got: u64::MAX
            })
        );
        assert_eq!(tracker.observe(u64::MAX), None);
    }

    #[test]
    fn uevent_ack_status_parsing() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        reply[28..32].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(ack_status(&reply, 7), Some(-1));
        assert_eq!(ack_status(&reply, 8), None);
        assert_eq!(ack_status(&reply[..30], 7), None);
        reply[4..6].copy_from_slice(&0x10u16.to_ne_bytes());
        assert_eq!(ack_status(&reply, 7), None);
    }
}
