//! The kernel's uevent format (`ACTION@DEVPATH\0KEY=VALUE\0...`) and the
//! injection message a privileged process sends to the kernel (port 0) to have
//! it number and broadcast an event (`uevent_net_rcv`, Linux >= 4.18).

use super::{
    check_action, check_devpath, check_env, decode_env, put_env, utf8, DecodeError, EncodeError,
    Invalid, Uevent, MAX_ENV_BYTES, MAX_ENV_KEYS,
};

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDR_BYTES: usize = 16;
/// The netlink message type used for injection: the lowest non-control type
/// (`NLMSG_MIN_TYPE`); the kernel ignores lower ones.
pub const INJECTION_MSG_TYPE: u16 = 0x10;
/// `NLM_F_REQUEST`: required, or the kernel only acknowledges.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: asks the kernel for an acknowledgement carrying the result
/// (0, or e.g. `-EPERM`), so the emitter can report failures.
pub const NLM_F_ACK: u16 = 0x4;

/// Room the kernel needs to append `SEQNUM=<u64>\0`.
const SEQNUM_ENTRY_MAX_BYTES: usize = "SEQNUM=".len() + 20 + 1;
/// The kernel refuses an injection whose netlink message plus the appended
/// SEQNUM exceeds `UEVENT_BUFFER_SIZE` (2048).
const MAX_INJECTION_BYTES: usize = MAX_ENV_BYTES - SEQNUM_ENTRY_MAX_BYTES;

/// The fields of a `struct nlmsghdr` (host byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsgHeader {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// Decodes a kernel-format uevent.
pub fn parse_kernel(bytes: &[u8]) -> Result<Uevent, DecodeError> {
    let header_end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Header)?;
    let header = &bytes[..header_end];
    let at = header
        .iter()
        .position(|&b| b == b'@')
        .ok_or(DecodeError::Header)?;
    let action = utf8(&header[..at])?;
    let devpath = utf8(&header[at + 1..])?;
    check_action(&action)?;
    check_devpath(&devpath)?;
    let env = decode_env(&bytes[header_end + 1..])?;
    Ok(Uevent {
        action,
        devpath,
        env,
    })
}

/// Encodes `event` in the kernel format.
pub fn encode_kernel(event: &Uevent) -> Result<Vec<u8>, EncodeError> {
    let env_bytes = check_header_and_env(event)?;
    let mut out = Vec::with_capacity(header_bytes(event) + env_bytes);
    put_header(&mut out, event);
    put_env(&mut out, &event.env);
    Ok(out)
}

/// Encodes the injection message for `event`: a `nlmsghdr` (type
/// [`INJECTION_MSG_TYPE`], flags `NLM_F_REQUEST | NLM_F_ACK`, sequence `seq`,
/// port 0) followed by the kernel format without `SEQNUM`, which the kernel
/// appends. It must leave room for that entry (one key, 28 bytes).
pub fn encode_injection(event: &Uevent, seq: u32) -> Result<Vec<u8>, EncodeError> {
    if event.get("SEQNUM").is_some() {
        return Err(EncodeError::SeqnumInInjection);
    }
    let env_bytes = check_header_and_env(event)?;
    if event.env.len() >= MAX_ENV_KEYS {
        return Err(Invalid::TooManyKeys {
            count: event.env.len() + 1,
        }
        .into());
    }
    let total = NLMSG_HDR_BYTES + header_bytes(event) + env_bytes;
    if total > MAX_INJECTION_BYTES {
        return Err(EncodeError::InjectionTooLarge {
            bytes: total,
            max: MAX_INJECTION_BYTES,
        });
    }
    let mut out = Vec::with_capacity(total);
    let len = u32::try_from(total).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&INJECTION_MSG_TYPE.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    put_header(&mut out, event);
    put_env(&mut out, &event.env);
    Ok(out)
}

/// Decodes an injection message; accepts exactly what the kernel would
/// broadcast and [`encode_injection`] can produce.
pub fn parse_injection(bytes: &[u8]) -> Result<(NlMsgHeader, Uevent), DecodeError> {
    let Some((head, payload)) = bytes.split_first_chunk::<NLMSG_HDR_BYTES>() else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let half = |at: usize| u16::from_ne_bytes([head[at], head[at + 1]]);
    let header = NlMsgHeader {
        len: word(0),
        kind: half(4),
        flags: half(6),
        seq: word(8),
        pid: word(12),
    };
    if usize::try_from(header.len).ok() != Some(bytes.len()) {
        return Err(DecodeError::Netlink(
            "nlmsg_len differs from the message size",
        ));
    }
    if header.kind < INJECTION_MSG_TYPE {
        return Err(DecodeError::Netlink("type is a netlink control type"));
    }
    if header.flags & NLM_F_REQUEST == 0 {
        return Err(DecodeError::Netlink("NLM_F_REQUEST not set"));
    }
    if bytes.len() > MAX_INJECTION_BYTES {
        return Err(DecodeError::Netlink("no room left for the kernel's SEQNUM"));
    }
    let event = parse_kernel(payload)?;
    if event.get("SEQNUM").is_some() {
        return Err(DecodeError::SeqnumInInjection);
    }
    if event.env.len() >= MAX_ENV_KEYS {
        return Err(Invalid::TooManyKeys {
            count: event.env.len() + 1,
        }
        .into());
    }
    Ok((header, event))
}

fn check_header_and_env(event: &Uevent) -> Result<usize, Invalid> {
    check_action(&event.action)?;
    check_devpath(&event.devpath)?;
    check_env(&event.env)
}

fn header_bytes(event: &Uevent) -> usize {
    event.action.len() + 1 + event.devpath.len() + 1
}

fn put_header(out: &mut Vec<u8>, event: &Uevent) {
    out.extend_from_slice(event.action.as_bytes());
    out.push(b'@');
    out.extend_from_slice(event.devpath.as_bytes());
    out.push(0);
}
