//! Uevent codecs and trust checks, pure (no I/O): the kernel wire format, the
//! kernel injection message, the libudev group-2 format, MurmurHash2 filter
//! hashes, and the receive-side trust check. Every decoder is bounded and
//! returns an error on any byte string; none of them panics.

mod kernel;
mod libudev;
mod murmur;
mod trust;

pub use kernel::{
    encode_injection, encode_kernel, parse_injection, parse_kernel, NlMsgHeader,
    INJECTION_MSG_TYPE, NLMSG_HDR_BYTES, NLM_F_ACK, NLM_F_REQUEST,
};
pub use libudev::{
    encode_libudev, parse_libudev, parse_libudev_header, LibudevHeader, LIBUDEV_ACTIONS,
    LIBUDEV_HEADER_BYTES, LIBUDEV_MAGIC, LIBUDEV_PREFIX,
};
pub use murmur::{murmur_hash2, string_hash32, tag_bloom64};
pub use trust::{accept_kernel, Credentials, Reject, KERNEL_GROUP_MASK};

/// Most bytes the `KEY=VALUE\0` entries of one event may take (the kernel's
/// `UEVENT_BUFFER_SIZE`).
pub const MAX_ENV_BYTES: usize = 2048;
/// Most `KEY=VALUE` entries in one event (the kernel's `UEVENT_NUM_ENVP`).
pub const MAX_ENV_KEYS: usize = 64;
/// Longest accepted action word (the kernel's longest is `offline`).
pub const MAX_ACTION_BYTES: usize = 32;
/// Longest accepted DEVPATH.
pub const MAX_DEVPATH_BYTES: usize = 1024;

/// One uevent: the action and devpath of its header, and its environment in
/// wire order.
///
/// `env` holds every `KEY=VALUE` entry exactly as carried on the wire; like the
/// kernel's own events it normally repeats `ACTION` and `DEVPATH` and carries
/// `SUBSYSTEM` and (once the kernel has numbered it) `SEQNUM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub env: Vec<(String, String)>,
}

impl Uevent {
    /// An event whose environment starts, as the kernel's do, with
    /// `ACTION=<action>` and `DEVPATH=<devpath>`.
    pub fn new(action: impl Into<String>, devpath: impl Into<String>) -> Self {
        let action = action.into();
        let devpath = devpath.into();
        let env = vec![
            ("ACTION".to_owned(), action.clone()),
            ("DEVPATH".to_owned(), devpath.clone()),
        ];
        Self {
            action,
            devpath,
            env,
        }
    }

    /// Appends `KEY=VALUE` (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Replaces the value of the first `key` entry, or appends one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.env.push((key.to_owned(), value)),
        }
    }

    /// The value of the first `key` entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `SEQNUM` as a number, when present and decimal.
    pub fn seqnum(&self) -> Option<u64> {
        self.get("SEQNUM")?.parse().ok()
    }

    /// The `SUBSYSTEM` entry.
    pub fn subsystem(&self) -> Option<&str> {
        self.get("SUBSYSTEM")
    }
}

/// A content rule an event breaks; shared by the decoders and the encoders so
/// that whatever decodes also encodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error(
        "action must be 1..={MAX_ACTION_BYTES} bytes without '@', '=', '/', NUL or whitespace"
    )]
    Action,
    #[error("devpath must start with '/', be at most {MAX_DEVPATH_BYTES} bytes and hold no NUL")]
    Devpath,
    #[error("entry {index}: key must be non-empty and hold no '=' or NUL")]
    Key { index: usize },
    #[error("entry {index}: value must hold no NUL")]
    Value { index: usize },
    #[error("{count} environment entries (at most {MAX_ENV_KEYS})")]
    TooManyKeys { count: usize },
    #[error("environment of {bytes} bytes (at most {MAX_ENV_BYTES})")]
    EnvTooLarge { bytes: usize },
    #[error("libudev receivers need property {0}")]
    MissingProperty(&'static str),
    #[error("property {key} disagrees with the event's {key} field")]
    Mismatch { key: &'static str },
    #[error("action {0:?} is not one libudev knows")]
    UnknownAction(String),
    #[error("SEQNUM must be a non-zero decimal number")]
    Seqnum,
    #[error("tag {0:?} must be non-empty and hold no ':', NUL or whitespace")]
    Tag(String),
}

/// Why a byte string is not an event of the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes is too short")]
    TooShort { len: usize },
    #[error("message header is not a NUL-terminated ACTION@DEVPATH")]
    Header,
    #[error("environment is not NUL-terminated")]
    Unterminated,
    #[error("empty environment entry")]
    EmptyEntry,
    #[error("environment entry {index} has no '='")]
    NotKeyValue { index: usize },
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("not a libudev message (prefix)")]
    NotLibudev,
    #[error("libudev magic {0:#010x} is not 0xfeedcafe")]
    BadMagic(u32),
    #[error("libudev header offsets out of bounds")]
    Offsets,
    #[error("netlink header: {0}")]
    Netlink(&'static str),
    #[error("an injection message must not carry SEQNUM")]
    SeqnumInInjection,
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Why an event cannot be put on the wire in the requested format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("an injected event must not carry SEQNUM: the kernel appends it")]
    SeqnumInInjection,
    #[error(
        "injection message of {bytes} bytes leaves no room for the kernel's SEQNUM (at most {max})"
    )]
    InjectionTooLarge { bytes: usize, max: usize },
    #[error("tags given both as an argument and as a TAGS property")]
    DuplicateTags,
}

fn check_action(action: &str) -> Result<(), Invalid> {
    let bad = |b: u8| b == b'@' || b == b'=' || b == b'/' || b == 0 || b.is_ascii_whitespace();
    if action.is_empty() || action.len() > MAX_ACTION_BYTES || action.bytes().any(bad) {
        return Err(Invalid::Action);
    }
    Ok(())
}

fn check_devpath(devpath: &str) -> Result<(), Invalid> {
    if !devpath.starts_with('/') || devpath.len() > MAX_DEVPATH_BYTES || devpath.contains('\0') {
        return Err(Invalid::Devpath);
    }
    Ok(())
}

/// Checks every entry and the bounds; returns the encoded size.
fn check_env(env: &[(String, String)]) -> Result<usize, Invalid> {
    if env.len() > MAX_ENV_KEYS {
        return Err(Invalid::TooManyKeys { count: env.len() });
    }
    let mut bytes = 0usize;
    for (index, (key, value)) in env.iter().enumerate() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Invalid::Key { index });
        }
        if value.contains('\0') {
            return Err(Invalid::Value { index });
        }
        bytes += key.len() + value.len() + 2;
    }
    if bytes > MAX_ENV_BYTES {
        return Err(Invalid::EnvTooLarge { bytes });
    }
    Ok(bytes)
}

/// Appends `KEY=VALUE\0` for every entry (already checked).
fn put_env(out: &mut Vec<u8>, env: &[(String, String)]) {
    for (key, value) in env {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

/// Decodes a run of `KEY=VALUE\0` entries, bounded as the kernel bounds them.
fn decode_env(bytes: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    if bytes.len() > MAX_ENV_BYTES {
        return Err(Invalid::EnvTooLarge { bytes: bytes.len() }.into());
    }
    let Some(body) = bytes.strip_suffix(b"\0") else {
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        return Err(DecodeError::Unterminated);
    };
    let mut env = Vec::new();
    for (index, entry) in body.split(|&b| b == 0).enumerate() {
        if index >= MAX_ENV_KEYS {
            return Err(Invalid::TooManyKeys { count: index + 1 }.into());
        }
        if entry.is_empty() {
            return Err(DecodeError::EmptyEntry);
        }
        let eq = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(DecodeError::NotKeyValue { index })?;
        if eq == 0 {
            return Err(Invalid::Key { index }.into());
        }
        let key = utf8(&entry[..eq])?;
        let value = utf8(&entry[eq + 1..])?;
        env.push((key, value));
    }
    Ok(env)
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
mod tests;
