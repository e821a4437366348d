//! The privileged uevent writer's protocol and its checks (pure but for
//! the reads of sysfs that validation needs).
//!
//! Under the shipped unit mdevregd sees `/sys` read-only
//! (`ProtectKernelTunables=yes`), so it cannot write the synthetic `change`
//! of a vendor-VFIO VF ([`crate::synth_uevent`]) itself. It asks
//! `mdevreg-uevent-writer` (its own socket-activated unit, with a writable
//! `/sys`) over a local socket, one request per connection:
//!
//! ```text
//! request:  <registered|unregistered> <devpath>\n       (at most MAX_REQUEST bytes)
//! answer:   ok <synth-uuid>\n  |  error <errno> <text>\n
//! ```
//!
//! The writer builds the line itself ([`crate::synth_uevent::change_line`])
//! and writes only `<devpath>/uevent` of a device that is a vendor-VFIO
//! virtual function (`nvidia/` and `physfn`), reached without a symlink
//! and below `<root>/devices` ([`validate`]): the code, not the sandbox,
//! limits it to exactly those files.

pub mod server;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::emit::MdevState;
use crate::paths::{SysfsRoot, NVIDIA_VFIO_DIR, PHYSFN_LINK};

/// Largest request (a devpath is far shorter; sysfs paths stay < 4 KiB).
pub const MAX_REQUEST: usize = 4096;
/// Largest answer read by the client.
pub const MAX_ANSWER: usize = 4096;

/// One request: write the synthetic `change` with `state` for `devpath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub state: MdevState,
    pub devpath: String,
}

/// Why a request is refused; each maps to an errno for the answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("request not terminated by a newline")]
    Unterminated,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("request is not `<registered|unregistered> <devpath>`")]
    Malformed,
    #[error("unknown state {0:?} (registered or unregistered)")]
    BadState(String),
    #[error("not a canonical device path: {0:?}")]
    BadDevpath(String),
    #[error("{0:?} resolves outside the devices tree")]
    Escapes(String),
    #[error("{0:?} is reached through a symlink")]
    NotCanonical(String),
    #[error("{0:?} is not an NVIDIA vendor-specific VFIO virtual function")]
    NotVendorVf(String),
    #[error("{path}: {text}")]
    Io {
        path: String,
        errno: i32,
        text: String,
    },
}

impl Refusal {
    /// The errno sent in the answer (`ENOENT` for a device that is gone,
    /// so the daemon treats it as it does a direct write).
    pub fn errno(&self) -> i32 {
        use nix::libc;
        match self {
            Refusal::Io { errno, .. } => *errno,
            Refusal::NotVendorVf(_) | Refusal::Escapes(_) | Refusal::NotCanonical(_) => libc::EPERM,
            Refusal::TooLong => libc::EMSGSIZE,
            _ => libc::EINVAL,
        }
    }

    fn io(path: &Path, err: &io::Error) -> Refusal {
        Refusal::Io {
            path: path.display().to_string(),
            errno: err.raw_os_error().unwrap_or(nix::libc::EIO),
            text: err.to_string(),
        }
    }
}

impl Request {
    /// The bytes sent for this request.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}\n", self.state.as_str(), self.devpath).into_bytes()
    }

    /// Parses one request (the whole of what the client sent); checks the
    /// devpath's shape, not what it points at.
    pub fn decode(bytes: &[u8]) -> Result<Request, Refusal> {
        if bytes.len() > MAX_REQUEST {
            return Err(Refusal::TooLong);
        }
        let line = bytes.strip_suffix(b"\n").ok_or(Refusal::Unterminated)?;
        if line.contains(&b'\n') {
            return Err(Refusal::Malformed);
        }
        let line = std::str::from_utf8(line).map_err(|_| Refusal::NotUtf8)?;
        let (state, devpath) = line.split_once(' ').ok_or(Refusal::Malformed)?;
        let state = match state {
            "registered" => MdevState::Registered,
            "unregistered" => MdevState::Unregistered,
            other => return Err(Refusal::BadState(other.chars().take(64).collect())),
        };
        // Any root will do for the lexical check.
        if SysfsRoot::new("/").devpath_to_path(devpath).is_none() || devpath.contains(['\n', ' ']) {
            return Err(Refusal::BadDevpath(devpath.chars().take(256).collect()));
        }
        Ok(Request {
            state,
            devpath: devpath.to_owned(),
        })
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Written, with this `SYNTH_UUID`.
    Ok(uuid::Uuid),
    /// Not written: an errno and a text.
    Error(i32, String),
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Ok(uuid) => format!("ok {}\n", uuid.hyphenated()),
            Answer::Error(errno, text) => {
                // One line, whatever the text holds.
                let text: String = text
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                format!("error {errno} {text}\n")
            }
        }
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        let line = std::str::from_utf8(bytes.strip_suffix(b"\n")?).ok()?;
        if let Some(uuid) = line.strip_prefix("ok ") {
            return uuid.parse().ok().map(Answer::Ok);
        }
        let (errno, text) = line.strip_prefix("error ")?.split_once(' ')?;
        Some(Answer::Error(errno.parse().ok()?, text.to_owned()))
    }
}

/// Checks that `devpath` names a vendor-VFIO virtual function below `root`
/// (canonical: give [`SysfsRoot::canonicalize`]'s result), reached without
/// a symlink; returns its directory.
pub fn validate(root: &SysfsRoot, devpath: &str) -> Result<PathBuf, Refusal> {
    let lexical = root
        .devpath_to_path(devpath)
        .ok_or_else(|| Refusal::BadDevpath(devpath.to_owned()))?;
    let resolved = std::fs::canonicalize(&lexical).map_err(|err| Refusal::io(&lexical, &err))?;
    if !resolved.starts_with(root.path().join("devices")) {
        return Err(Refusal::Escapes(devpath.to_owned()));
    }
    if resolved != lexical {
        return Err(Refusal::NotCanonical(devpath.to_owned()));
    }
    let nvidia = std::fs::symlink_metadata(resolved.join(NVIDIA_VFIO_DIR));
    let physfn = std::fs::symlink_metadata(resolved.join(PHYSFN_LINK));
    match (nvidia, physfn) {
        (Ok(nvidia), Ok(physfn)) if nvidia.is_dir() && physfn.file_type().is_symlink() => {
            Ok(resolved)
        }
        _ => Err(Refusal::NotVendorVf(devpath.to_owned())),
    }
}

/// Carries one request out: validates it and writes the line into the
/// VF's `uevent` file (never created, never through a symlink).
pub fn handle(root: &SysfsRoot, request: &Request) -> Result<uuid::Uuid, Refusal> {
    let device = validate(root, &request.devpath)?;
    let uuid = uuid::Uuid::new_v4();
    let line = crate::synth_uevent::change_line(request.state, &uuid);
    let file = device.join("uevent");
    crate::synth_uevent::write_line(&file, &line).map_err(|err| Refusal::io(&file, &err))?;
    Ok(uuid)
}

/// How long the daemon waits for the writer (connect, request, answer).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The daemon's side: asks the writer listening on `socket` to write the
/// synthetic `change` for `devpath`. An `error` answer comes back as an
/// [`io::Error`] of its errno's kind (`NotFound` for a device that is gone)
/// with the writer's text.
pub async fn request(socket: &Path, devpath: &str, state: MdevState) -> io::Result<uuid::Uuid> {
    let request = Request {
        state,
        devpath: devpath.to_owned(),
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(&request.encode()).await?;
        stream.shutdown().await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the uevent writer at {}", socket.display()),
            )
        })?
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("uevent writer at {}: {err}", socket.display()),
            )
        })?;
    match Answer::decode(&answer) {
        Some(Answer::Ok(uuid)) => Ok(uuid),
        Some(Answer::Error(errno, text)) => Err(io::Error::new(
            io::Error::from_raw_os_error(errno).kind(),
            format!("uevent writer: {text}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "uevent writer: unreadable answer {:?}",
                String::from_utf8_lossy(&answer)
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
