//! The embedded D-Bus broker behind `mdevregd --bus embedded[=ADDRESS]`: a
//! `busd` bus on its own thread and its own zruntime runtime (never on the
//! daemon's tokio runtime), so mdevregd runs on a machine with no bus at all.
//!
//! busd applies no policy: every client may own any free name and call
//! anyone. The daemon owns `org.mdevreg.Registry1` first and checks the
//! caller's uid itself (SPEC §3), as it does on the system bus.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::{select, Either};
use zbus::address::transport::{Transport, Unix, UnixSocket};
use zbus::Address;

/// Name of the socket file in a directory created for the bus.
const SOCKET_FILE_NAME: &str = "bus";

/// A running embedded bus. Stops (disconnecting every client and removing
/// the socket) on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct EmbeddedBus {
    address: String,
    /// Socket file, if the bus listens on a path socket.
    socket_path: Option<PathBuf>,
    /// Directory created for the default address, removed on stop.
    created_dir: Option<PathBuf>,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct StopSignal {
    requested: AtomicBool,
    event: zruntime::Event,
}

impl StopSignal {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.requested.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            // Checked again after listening, so a request between the first
            // check and `listen` is not missed.
            if self.requested.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

impl EmbeddedBus {
    /// Starts a bus listening on `address` (a D-Bus server address such as
    /// `unix:path=/run/x`), or, with `None`, on a path socket in a fresh
    /// directory under `$XDG_RUNTIME_DIR`, `/run/mdevreg` or `/tmp`, the first
    /// that works. A path socket (not abstract) so that clients in other
    /// network namespaces can reach it. Returns once the bus listens; a path
    /// socket is made connectable by every user (mode 0666).
    pub fn start(address: Option<&str>) -> io::Result<EmbeddedBus> {
        let (listen_address, created_dir) = match address {
            Some(address) => (address.to_owned(), None),
            None => {
                let dir = create_socket_dir()?;
                let socket = UnixSocket::File(dir.join(SOCKET_FILE_NAME));
                let address = Address::new(Transport::Unix(Unix::new(socket))).to_string();
                (address, Some(dir))
            }
        };
        let result = Self::start_on(&listen_address);
        if result.is_err() {
            if let Some(dir) = &created_dir {
                // Best effort: nothing listens there, an empty dir is harmless.
                let _ = fs::remove_dir(dir);
            }
        }
        let mut bus = result?;
        bus.created_dir = created_dir;
        Ok(bus)
    }

    fn start_on(listen_address: &str) -> io::Result<EmbeddedBus> {
        let stop = Arc::new(StopSignal {
            requested: AtomicBool::new(false),
            event: zruntime::Event::new(),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Address, String>>();
        let thread_stop = Arc::clone(&stop);
        let thread_address = listen_address.to_owned();
        let thread = thread::Builder::new()
            .name("mdevreg-bus".to_owned())
            .spawn(move || run_bus(&thread_address, &thread_stop, &ready_tx))?;
        let bus_address = match ready_rx.recv() {
            Ok(Ok(bus_address)) => bus_address,
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(io::Error::other(format!(
                    "cannot start embedded bus on {listen_address}: {message}"
                )));
            }
            Err(mpsc::RecvError) => {
                let _ = thread.join();
                return Err(io::Error::other(format!(
                    "embedded bus thread for {listen_address} ended before listening"
                )));
            }
        };
        let socket_path = match bus_address.transport() {
            Transport::Unix(unix) => match unix.path() {
                UnixSocket::File(path) => Some(path.clone()),
                _ => None,
            },
            _ => None,
        };
        let bus = EmbeddedBus {
            address: bus_address.to_string(),
            socket_path,
            created_dir: None,
            stop,
            thread: Some(thread),
        };
        if let Some(path) = &bus.socket_path {
            // Clients of any uid may connect; the daemon authorises calls.
            fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
        }
        Ok(bus)
    }

    /// The address clients connect to (with the bus GUID), e.g.
    /// `unix:path=/run/user/0/mdevreg-bus-1-2/bus,guid=...`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket file, for path sockets.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Whether the bus thread is still serving.
    pub fn is_running(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Stops the bus: disconnects every client, removes the socket file (and
    /// the directory created for it) and waits for the bus thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.request();
        if thread.join().is_err() {
            log::error!("embedded bus thread panicked");
        }
        if let Some(dir) = self.created_dir.take() {
            if let Err(err) = fs::remove_dir_all(&dir) {
                log::warn!("cannot remove {}: {err}", dir.display());
            }
        }
    }
}

impl Drop for EmbeddedBus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Body of the bus thread: listen, report, serve until stopped, clean up.
fn run_bus(listen_address: &str, stop: &StopSignal, ready: &mpsc::Sender<Result<Address, String>>) {
    zruntime::block_on(async {
        let mut bus = match busd::bus::Bus::for_address(Some(listen_address)).await {
            Ok(bus) => bus,
            Err(err) => {
                // The receiver waits for exactly one message; if it is gone
                // there is nobody left to tell.
                let _ = ready.send(Err(format!("{err:#}")));
                return;
            }
        };
        let _ = ready.send(Ok(bus.address().clone()));
        {
            let stopped = pin!(stop.wait());
            let running = pin!(bus.run());
            match select(stopped, running).await {
                Either::Left(((), _)) => log::debug!("embedded bus stopping"),
                Either::Right((Ok(()), _)) => log::warn!("embedded bus stopped"),
                Either::Right((Err(err), _)) => log::error!("embedded bus failed: {err:#}"),
            }
        }
        // Dropping the peers ends the tasks serving them, which closes every
        // client connection; otherwise they would live on after the bus.
        bus.peers().peers_mut().await.clear();
        if let Err(err) = bus.cleanup().await {
            log::warn!("embedded bus cleanup: {err:#}");
        }
    });
}

/// Creates a fresh directory (mode 0755) for the bus socket under the first
/// usable base directory.
fn create_socket_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(runtime_dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        bases.push(PathBuf::from(runtime_dir));
    }
    bases.push(PathBuf::from("/run/mdevreg"));
    bases.push(std::env::temp_dir());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let mut last_error = io::Error::other("no base directory for the bus socket");
    for base in bases {
        if let Err(err) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&base)
        {
            last_error = err;
            continue;
        }
        for _ in 0..16 {
            let dir = base.join(format!(
                "mdevreg-bus-{}-{nanos:x}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::DirBuilder::new().mode(0o755).create(&dir) {
                Ok(()) => {
                    // The mode above is filtered by the umask; set it exactly.
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                    return Ok(dir);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    last_error = err;
                    break;
                }
            }
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_before_wait_is_not_lost() {
        let stop = StopSignal {
            requested: AtomicBool::new(false),
            event: zruntime::Event::new(),
        };
        stop.request();
        zruntime::block_on(stop.wait());
    }

    #[test]
    fn invalid_address_is_an_error() {
        let err = EmbeddedBus::start(Some("nonsense:foo=bar")).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }
}
