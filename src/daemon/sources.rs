//! The daemon's sources, each a task feeding the loop through one channel
//! of [`SourceMessage`]s: the kernel uevent listener (hints, gaps,
//! overflows), the owner watch (unique names leaving the bus), and full
//! sysfs scans run on a blocking thread ([`spawn_scan`]). D-Bus calls come
//! on their own channel as [`crate::dbus::Request`]s.
//!
//! A new source (a poller, another backend's hints) is one more task
//! holding a clone of the `Sender<SourceMessage>`: send
//! [`SourceMessage::Hint`] with [`Hint::reread`] to have a devpath re-read
//! and diffed, [`SourceMessage::Resync`] for a full rescan; add a variant
//! (and a [`super::core::Core`] method turning it into a commit) only for
//! an input that is neither.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zbus::fdo::DBusProxy;

use super::counters::{Counter, Counters};
use crate::emit::SEQNUM_KEY;
use crate::netlink::{RecvOutcome, SeqnumTracker, UeventListener};
use crate::paths::SysfsRoot;
use crate::sysfs;
use crate::uevent::Uevent;

/// A message from a source other than a D-Bus request.
#[derive(Debug)]
pub enum SourceMessage {
    /// Something may have changed at a devpath: re-read it.
    Hint(Hint),
    /// Events may have been lost: rescan everything.
    Resync(&'static str),
    /// A unique bus name left the bus.
    OwnerGone(String),
}

/// What the core needs of a trusted kernel uevent (or any other hint): the
/// devpath to re-read and, for one of our own injected events, its
/// `MDEVREG_SEQNUM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub devpath: String,
    pub echo_seqnum: Option<u64>,
}

impl Hint {
    /// The hint a kernel uevent gives (its environment is dropped here, so
    /// a backlog of queued hints stays small).
    pub fn of(event: Uevent) -> Hint {
        let echo_seqnum = event
            .get(SEQNUM_KEY)
            .and_then(|value| value.parse::<u64>().ok());
        Hint {
            devpath: event.devpath,
            echo_seqnum,
        }
    }

    /// A plain "re-read `devpath`" hint.
    pub fn reread(devpath: impl Into<String>) -> Hint {
        Hint {
            devpath: devpath.into(),
            echo_seqnum: None,
        }
    }
}

/// Forwards `NameOwnerChanged` of unique names leaving the bus.
pub async fn spawn_owner_watch(
    bus: &DBusProxy<'static>,
    sources: mpsc::Sender<SourceMessage>,
) -> zbus::Result<JoinHandle<()>> {
    // arg2 (new owner) empty: a name lost its owner.
    let mut stream = bus.receive_name_owner_changed_with_args(&[(2, "")]).await?;
    Ok(tokio::spawn(async move {
        while let Some(signal) = stream.next().await {
            let Ok(args) = signal.args() else {
                continue;
            };
            let name = args.name().to_string();
            if !name.starts_with(':') || args.new_owner().is_some() {
                continue;
            }
            if sources.send(SourceMessage::OwnerGone(name)).await.is_err() {
                return;
            }
        }
    }))
}

/// Fewest seconds between two rescans asked for by SEQNUM gaps.
///
/// The kernel numbers every uevent from one counter but delivers a network
/// device's events, and events injected in a namespace, only in that
/// namespace: every container start (a new `lo`) leaves a gap here, and a
/// busy host can show hundreds a minute. Each gap rescanning at once kept
/// full scans running back to back (measured: 326 gaps in 40 s, 80 % of the
/// daemon's CPU). A real loss shows as a receive-buffer overflow
/// (`ENOBUFS`), which still rescans at once; a gap rescans at once too,
/// and further gaps within this interval share one rescan at its end.
pub const GAP_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// When the rescans asked for by SEQNUM gaps run (pure; see
/// [`GAP_RESCAN_INTERVAL`]).
#[derive(Debug)]
pub struct GapRescans {
    interval: Duration,
    /// The last gap rescan asked for.
    last: Option<Instant>,
    /// A gap came since, not yet rescanned for.
    pending: bool,
}

impl GapRescans {
    pub fn new(interval: Duration) -> GapRescans {
        GapRescans {
            interval,
            last: None,
            pending: false,
        }
    }

    /// A gap seen at `now`: whether to rescan now (else one is pending,
    /// due at [`GapRescans::due`]).
    pub fn gap(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now < last + self.interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// When the pending rescan is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        match (self.pending, self.last) {
            (true, Some(last)) => Some(last + self.interval),
            _ => None,
        }
    }

    /// The pending rescan is asked for at `now`.
    pub fn fired(&mut self, now: Instant) {
        self.pending = false;
        self.last = Some(now);
    }
}

/// Reads the uevent listener and forwards hints, gaps and overflows.
pub async fn read_uevents(
    mut listener: UeventListener,
    sources: mpsc::Sender<SourceMessage>,
    counters: Arc<Counters>,
) {
    let mut tracker = SeqnumTracker::new();
    let mut gaps = GapRescans::new(GAP_RESCAN_INTERVAL);
    loop {
        let received = match gaps.due() {
            Some(due) => {
                tokio::select! {
                    // `recv` is cancel-safe: a datagram not taken stays queued.
                    received = listener.recv() => received,
                    () = tokio::time::sleep_until(due.into()) => {
                        gaps.fired(Instant::now());
                        if sources
                            .send(SourceMessage::Resync("SEQNUM gaps"))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
            None => listener.recv().await,
        };
        let message = match received {
            Ok(RecvOutcome::Event(event)) => {
                counters.bump(Counter::UeventsReceived);
                counters.mark_uevent();
                if let Some(gap) = event.seqnum().and_then(|seqnum| tracker.observe(seqnum)) {
                    counters.bump(Counter::SeqnumGaps);
                    let now = gaps.gap(Instant::now());
                    log::debug!(
                        "uevent SEQNUM gap: expected {}, got {}; {}",
                        gap.expected,
                        gap.got,
                        if now {
                            "rescanning"
                        } else {
                            "rescanning once the interval is over"
                        }
                    );
                    if now
                        && sources
                            .send(SourceMessage::Resync("SEQNUM gap"))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                SourceMessage::Hint(Hint::of(event))
            }
            Ok(RecvOutcome::Rejected(reject)) => {
                counters.reject(&reject);
                log::debug!("dropped a netlink message: {reject}");
                continue;
            }
            Ok(RecvOutcome::Overflow) => {
                counters.bump(Counter::NetlinkOverflows);
                tracker.reset();
                log::info!("uevent receive buffer overflowed; rescanning");
                SourceMessage::Resync("receive buffer overflow")
            }
            Err(err) => {
                log::error!("uevent listener: {err}; rescanning");
                tracker.reset();
                // Do not spin on a persistent error.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                SourceMessage::Resync("listener error")
            }
        };
        if sources.send(message).await.is_err() {
            return;
        }
    }
}

/// A full sysfs scan on a blocking thread, in its memory turn
/// ([`super::memory_turn`]: not while a large reply is being built).
pub fn spawn_scan(root: &SysfsRoot) -> JoinHandle<sysfs::Scan> {
    let root = root.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = super::memory_turn();
        sysfs::scan(&root)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_keep_the_devpath_and_our_seqnum() {
        let ours =
            Hint::of(Uevent::new("change", "/devices/virtual/mdevreg/a").with(SEQNUM_KEY, "5"));
        assert_eq!(ours.devpath, "/devices/virtual/mdevreg/a");
        assert_eq!(ours.echo_seqnum, Some(5));
        let garbled = Hint::of(Uevent::new("change", "/devices/x").with(SEQNUM_KEY, "five"));
        assert_eq!(garbled, Hint::reread("/devices/x"));
    }

    #[test]
    fn gap_rescans_are_spaced_and_never_dropped() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut gaps = GapRescans::new(Duration::from_secs(5));
        // The first gap rescans at once.
        assert!(gaps.gap(at(0)));
        assert_eq!(gaps.due(), None);
        // Gaps within the interval share one rescan at its end.
        assert!(!gaps.gap(at(100)));
        assert!(!gaps.gap(at(4_000)));
        assert_eq!(gaps.due(), Some(at(5_000)));
        gaps.fired(at(5_000));
        assert_eq!(gaps.due(), None);
        // The interval counts from that rescan.
        assert!(!gaps.gap(at(9_000)));
        assert_eq!(gaps.due(), Some(at(10_000)));
        gaps.fired(at(10_000));
        // A gap after a quiet interval rescans at once again.
        assert!(gaps.gap(at(20_000)));
        assert_eq!(gaps.due(), None);
    }
}
