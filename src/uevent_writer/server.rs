//! The writer's socket server: one connection at a time, one request per
//! connection, answered only for root peers (`SO_PEERCRED`). Blocking and
//! single-threaded: each request is a few small sysfs operations.

use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{handle, Answer, Refusal, Request, MAX_REQUEST};
use crate::paths::SysfsRoot;

/// How long a client may take to send its request and read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The listening socket: the one systemd passed (`LISTEN_FDS=1` for this
/// process, fd 3), else a new one bound at `path` (mode 0600).
pub fn listener(path: Option<&Path>) -> io::Result<UnixListener> {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        return bound;
    }
    let for_us = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if !for_us || std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no socket: give --listen PATH or start from a socket unit (one socket)",
        ));
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID/LISTEN_FDS
    // checked above) and nothing else in the process owns it.
    Ok(unsafe { UnixListener::from_raw_fd(3) })
}

/// Serves `listener` until it fails; `root` must be canonical.
pub fn serve(listener: &UnixListener, root: &SysfsRoot) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => serve_one(stream, root),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.raw_os_error() == Some(nix::libc::EMFILE) => {
                log::warn!("accept: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Answers one connection. The request is read before the peer is
/// judged, and what follows it is drained after the answer: a socket closed
/// with unread data resets the connection, and the peer might lose the
/// answer.
pub fn serve_one(mut stream: UnixStream, root: &SysfsRoot) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let request = read_request(&mut stream);
    let answer = match getsockopt(&stream, PeerCredentials) {
        Ok(peer) if peer.uid() == 0 => answer(request, root),
        Ok(peer) => {
            log::warn!(
                "refused a request from uid {} (pid {})",
                peer.uid(),
                peer.pid()
            );
            Answer::Error(
                nix::libc::EPERM,
                format!("refused: peer uid {} is not root", peer.uid()),
            )
        }
        Err(err) => Answer::Error(err as i32, format!("cannot identify the peer: {err}")),
    };
    let _ = stream.write_all(&answer.encode());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = io::copy(&mut (&stream).take(DRAIN_LIMIT), &mut io::sink());
}

/// At most this much is drained after the answer.
const DRAIN_LIMIT: u64 = 64 * 1024;

fn answer(request: Result<Vec<u8>, Refusal>, root: &SysfsRoot) -> Answer {
    let result = request
        .and_then(|bytes| Request::decode(&bytes))
        .and_then(|request| {
            let uuid = handle(root, &request)?;
            log::info!(
                "wrote the synthetic {} change of {} (SYNTH_UUID={uuid})",
                request.state.as_str(),
                request.devpath
            );
            Ok(uuid)
        });
    match result {
        Ok(uuid) => Answer::Ok(uuid),
        Err(refusal) => {
            log::warn!("refused: {refusal}");
            Answer::Error(refusal.errno(), refusal.to_string())
        }
    }
}

/// Reads up to a newline, the end of the stream, or one byte past
/// [`MAX_REQUEST`].
fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, Refusal> {
    let mut bytes = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !bytes.contains(&b'\n') && bytes.len() <= MAX_REQUEST {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(Refusal::Io {
                    path: "request".to_owned(),
                    errno: err.raw_os_error().unwrap_or(nix::libc::EIO),
                    text: err.to_string(),
                })
            }
        }
    }
    Ok(bytes)
}
