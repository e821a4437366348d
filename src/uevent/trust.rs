//! The receive-side trust check for group-1 (kernel) uevents, as a pure
//! function of what `recvmsg` returned: sender address, credentials and
//! bytes. Mirrors the straight line of checks in systemd's
//! `device_monitor_receive_device`.

use super::{parse_kernel, DecodeError, Uevent, LIBUDEV_PREFIX};

/// The `nl_groups` mask of a message multicast to group 1, the kernel's group.
pub const KERNEL_GROUP_MASK: u32 = 1;

/// The `SCM_CREDENTIALS` of a received message. The kernel's own events carry
/// pid 0 and uid 0; events the kernel broadcasts for an injecting process carry
/// that process's pid and uid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Why a received message is not accepted as a kernel uevent. Rejections are
/// to be counted and logged at debug level only: any local process can cause
/// them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("message truncated or empty")]
    Truncated,
    #[error("not multicast on the kernel group (groups mask {groups:#x})")]
    NotKernelGroup { groups: u32 },
    #[error("multicast on the kernel group from userspace port {port}")]
    NotFromKernelPort { port: u32 },
    #[error("no sender credentials")]
    NoCredentials,
    #[error("sender uid {uid} is not root")]
    NonRootSender { uid: u32 },
    #[error("libudev-format message on the kernel group")]
    LibudevFormat,
    #[error("malformed uevent: {0}")]
    Malformed(DecodeError),
}

/// Accepts `bytes` as a kernel uevent only if it came from the kernel.
///
/// `sender_port` and `groups` are the `nl_pid` and `nl_groups` of the sender
/// address, `credentials` the `SCM_CREDENTIALS` control message. The caller
/// reports a datagram cut by `MSG_TRUNC` as [`Reject::Truncated`] itself.
pub fn accept_kernel(
    sender_port: u32,
    groups: u32,
    credentials: Option<Credentials>,
    bytes: &[u8],
) -> Result<Uevent, Reject> {
    // An empty datagram carries nothing; it can only be a cut or bogus send.
    if bytes.is_empty() {
        return Err(Reject::Truncated);
    }
    // Unicast (mask 0) or another group: userspace talking to us directly,
    // never the kernel's broadcast.
    if groups != KERNEL_GROUP_MASK {
        return Err(Reject::NotKernelGroup { groups });
    }
    // A process with CAP_NET_ADMIN may multicast to group 1 too; only the
    // kernel sends from port 0 (injected events are re-sent by the kernel).
    if sender_port != 0 {
        return Err(Reject::NotFromKernelPort { port: sender_port });
    }
    // Without SO_PASSCRED data we cannot tell who sent it.
    let Some(credentials) = credentials else {
        return Err(Reject::NoCredentials);
    };
    // The kernel and processes allowed to inject events are root.
    if credentials.uid != 0 {
        return Err(Reject::NonRootSender {
            uid: credentials.uid,
        });
    }
    // udevd's processed events belong on group 2; one here is misrouted.
    if bytes.starts_with(LIBUDEV_PREFIX) {
        return Err(Reject::LibudevFormat);
    }
    parse_kernel(bytes).map_err(Reject::Malformed)
}
