//! A unix socket proxy in front of a bus: one client connects to
//! [`SocketProxy::address`] instead of the bus, and the proxy forwards the
//! bytes both ways. The test can have it stop reading what the client
//! writes once a number of bytes more have passed ([`SocketProxy::hold_after`]):
//! the client's socket then fills and its writes block, as when the bus
//! is slow to read a large message, while the bus → client direction goes
//! on. [`SocketProxy::release`] lets the bytes through again.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the client → bus direction is doing.
#[derive(Debug, Default)]
struct Gate {
    /// Bytes forwarded from the client so far.
    forwarded: u64,
    /// Stop reading from the client once `forwarded` reaches this.
    hold_at: Option<u64>,
    /// Not reading from the client (held).
    held: bool,
}

/// The proxy; its threads end when either side closes.
pub struct SocketProxy {
    path: PathBuf,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl SocketProxy {
    /// Listens on `path` and, for the first client that connects, connects
    /// to the bus socket `bus_path` and forwards.
    pub fn start(path: &Path, bus_path: &Path) -> SocketProxy {
        let listener = UnixListener::bind(path).expect("bind the proxy socket");
        let gate = Arc::new((Mutex::new(Gate::default()), Condvar::new()));
        let thread_gate = Arc::clone(&gate);
        let bus_path = bus_path.to_path_buf();
        std::thread::Builder::new()
            .name("socket-proxy".to_owned())
            .spawn(move || {
                let Ok((client, _)) = listener.accept() else {
                    return;
                };
                let bus = UnixStream::connect(&bus_path).expect("connect the proxy to the bus");
                let (client_read, bus_write) = (
                    client.try_clone().expect("clone client"),
                    bus.try_clone().expect("clone bus"),
                );
                std::thread::spawn(move || copy_back(bus, client));
                forward(client_read, bus_write, &thread_gate);
            })
            .expect("spawn the proxy");
        SocketProxy {
            path: path.to_path_buf(),
            gate,
        }
    }

    /// `unix:path=...` of the proxy.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.path.display())
    }

    /// Stops reading from the client once `bytes` more have passed.
    pub fn hold_after(&self, bytes: u64) {
        let (gate, _) = &*self.gate;
        let mut gate = gate.lock().expect("gate");
        gate.hold_at = Some(gate.forwarded + bytes);
    }

    /// Waits (at most `timeout`) until the proxy holds the client's bytes;
    /// returns the bytes forwarded until then.
    pub fn wait_held(&self, timeout: Duration) -> Option<u64> {
        let (gate, changed) = &*self.gate;
        let gate = gate.lock().expect("gate");
        let (gate, _) = changed
            .wait_timeout_while(gate, timeout, |gate| !gate.held)
            .expect("gate");
        gate.held.then_some(gate.forwarded)
    }

    /// Bytes forwarded from the client so far.
    pub fn forwarded(&self) -> u64 {
        self.gate.0.lock().expect("gate").forwarded
    }

    /// Forwards the client's bytes again.
    pub fn release(&self) {
        let (gate, changed) = &*self.gate;
        let mut gate = gate.lock().expect("gate");
        gate.hold_at = None;
        gate.held = false;
        changed.notify_all();
    }
}

/// Client → bus, through the gate.
fn forward(mut from: UnixStream, mut to: UnixStream, gate: &(Mutex<Gate>, Condvar)) {
    let (gate, changed) = gate;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        {
            let mut state = gate.lock().expect("gate");
            if state.hold_at.is_some_and(|at| state.forwarded >= at) {
                state.held = true;
                changed.notify_all();
                state = changed.wait_while(state, |state| state.held).expect("gate");
            }
            drop(state);
        }
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
        gate.lock().expect("gate").forwarded += n as u64;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Bus → client, never held.
fn copy_back(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
