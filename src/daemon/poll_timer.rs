//! The vendor-VFIO poll's clock: a periodic `timerfd` watched by the
//! runtime, armed only while there is something to poll.
//!
//! One wake-up per interval: tokio's own timers go through its timer wheel,
//! which wakes the thread again at each level boundary on the way to a
//! deadline seconds away (two or three wake-ups per poll). The kernel timer
//! ticks at a fixed rate (a late tick is not followed by a burst: the
//! expirations are counted and make one poll) and, for whole-second
//! intervals, on whole seconds of the monotonic clock, so it fires together
//! with the other second-aligned timers of the host instead of at its own
//! moment (the way GLib's `g_timeout_add_seconds` coalesces wake-ups).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The timer, as the runtime's reactor sees it.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct PollTimer {
    fd: AsyncFd<Timer>,
    interval: Duration,
    armed: bool,
}

impl PollTimer {
    /// A disarmed timer of period `interval` (must be within a tokio
    /// runtime with I/O enabled).
    pub fn new(interval: Duration) -> io::Result<PollTimer> {
        // Registering outside a runtime would panic; report it instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("the poll timer needs a tokio runtime"));
        }
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the timer is moved into the AsyncFd, which keeps it open
        // until the AsyncFd is dropped, and its raw fd never changes.
        let fd = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PollTimer {
            fd,
            interval,
            armed: false,
        })
    }

    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Starts ticking (a no-op when it ticks): the first tick one interval
    /// from now, rounded up to a whole second for intervals of whole
    /// seconds.
    pub fn arm(&mut self) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let now = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32);
        let first = first_tick(now, self.interval);
        self.fd.get_ref().0.set(
            Expiration::IntervalDelayed(TimeSpec::from(first), TimeSpec::from(self.interval)),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        self.armed = true;
        Ok(())
    }

    /// Stops ticking.
    pub fn disarm(&mut self) -> io::Result<()> {
        if self.armed {
            self.fd.get_ref().0.unset()?;
            self.armed = false;
        }
        Ok(())
    }

    /// Waits for the next tick; the number of intervals elapsed since the
    /// last one (at least 1).
    pub async fn tick(&self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut count = [0u8; 8];
            match guard.try_io(|fd| {
                nix::unistd::read(&fd.get_ref().0, &mut count).map_err(io::Error::from)
            }) {
                Ok(Ok(8)) => return Ok(u64::from_ne_bytes(count)),
                Ok(Ok(_)) => return Err(io::Error::other("short read from timerfd")),
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The first tick's monotonic time for a timer armed at `now`.
fn first_tick(now: Duration, interval: Duration) -> Duration {
    let due = now + interval;
    if interval.subsec_nanos() != 0 || interval.is_zero() {
        return due;
    }
    let nanos = due.as_nanos();
    let rounded = nanos.div_ceil(NANOS_PER_SEC) * NANOS_PER_SEC;
    Duration::from_secs((rounded / NANOS_PER_SEC) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_second_intervals_tick_on_whole_seconds() {
        let now = Duration::from_millis(10_300);
        assert_eq!(
            first_tick(now, Duration::from_secs(2)),
            Duration::from_secs(13)
        );
        assert_eq!(
            first_tick(Duration::from_secs(10), Duration::from_secs(2)),
            Duration::from_secs(12)
        );
        assert_eq!(
            first_tick(now, Duration::from_millis(1500)),
            Duration::from_millis(11_800)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ticks_while_armed() {
        let mut timer = PollTimer::new(Duration::from_millis(20)).expect("timerfd");
        assert!(!timer.is_armed());
        timer.arm().expect("arm");
        let ticks = timer.tick().await.expect("tick");
        assert!(ticks >= 1);
        timer.disarm().expect("disarm");
        // Setting the timer clears the expirations not read yet.
        let waited = tokio::time::timeout(Duration::from_millis(200), timer.tick()).await;
        assert!(waited.is_err(), "no tick while disarmed");
    }
}
