//! Hands freed heap back to the kernel once the loop has been quiet for
//! [`IDLE_TRIM_DELAY`] after handling inputs.
//!
//! A burst (many clients registering at once) raises the heap by the
//! objects and in-flight calls of that moment; once they are freed, glibc
//! keeps the pages as holes below longer-lived allocations, which its
//! automatic trim of the heap top never reaches.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Quiet time after a burst of inputs before freed heap is handed back.
pub const IDLE_TRIM_DELAY: Duration = Duration::from_secs(1);

pub struct IdleTrim {
    pub timer: Pin<Box<Sleep>>,
    last_input: Instant,
    /// Inputs were handled since the last trim.
    pub armed: bool,
}

impl IdleTrim {
    pub fn new() -> IdleTrim {
        IdleTrim {
            timer: Box::pin(tokio::time::sleep(IDLE_TRIM_DELAY)),
            last_input: Instant::now(),
            armed: false,
        }
    }

    /// Cheap on the hot path: the timer is only re-armed when it fires.
    pub fn note_input(&mut self) {
        self.last_input = Instant::now();
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(self.last_input + IDLE_TRIM_DELAY);
        }
    }

    pub fn timer_fired(&mut self) {
        let due = self.last_input + IDLE_TRIM_DELAY;
        if due > Instant::now() {
            self.timer.as_mut().reset(due);
        } else {
            self.armed = false;
            release_freed_memory();
        }
    }
}

/// Returns whole free pages of every malloc arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers; it walks glibc's own arenas
    // under their locks and madvise()s free pages away.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}
