//! Hands freed heap back to the kernel once the loop has been quiet for
//! [`IDLE_TRIM_DELAY`] after handling inputs.
//!
//! A burst (many clients registering at once) raises the heap by the
//! objects and in-flight calls of that moment; once they are freed, glibc
//! keeps the pages as holes below longer-lived allocations, which its
//! automatic trim of the heap top never reaches.
//!
//! Large buffers (a `GetManagedObjects` reply of the 1000 × 32 tree is
//! megabytes) mostly come as mappings of their own: [`tune_allocator`]
//! fixes glibc's mmap threshold, so a fresh one is mapped and returned to
//! the kernel the moment it is freed. Left dynamic, glibc raises the
//! threshold to the size of the largest block freed (up to 32 MiB), and the
//! next replies come from the heaps of the threads that built them. Even
//! fixed, a buffer that grows (a reply is serialized into a growing `Vec`)
//! or one that fits the free space of an arena is carved from the heap,
//! where it stays as a hole once freed: so the server trims after every
//! reply of at least [`TRIM_AFTER_REPLY_BYTES`] (while it still holds the turn
//! of large replies, so the next one is built in a trimmed heap), and the
//! daemon once after start-up (the scan's buffers). It also caps the number
//! of malloc arenas.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
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

/// Full sysfs scans and large replies being built take turns, on the
/// blocking threads that run them: each needs megabytes while it runs (a
/// rescan of the 1000 × 32 tree ~10 MB, a reply twice its 17 MB), and
/// both at once is the peak the daemon's memory must hold (rescans come
/// every few seconds while another network namespace's uevents leave
/// gaps). The one waiting waits for one scan or one reply being built,
/// never for a queue: large replies are built one at a time.
pub fn memory_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// After a reply of at least this many bytes the server trims.
pub const TRIM_AFTER_REPLY_BYTES: usize = 1024 * 1024;

/// Allocations at least this large are mappings of their own.
pub const MMAP_THRESHOLD: usize = 256 * 1024;
/// At most this many malloc arenas (glibc's default: 8 per core).
pub const ARENA_MAX: usize = 2;

/// Sets the allocator up as described in the module doc; call it first
/// thing, before any thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    for (param, value, name) in [
        (
            nix::libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
            "M_MMAP_THRESHOLD",
        ),
        (nix::libc::M_ARENA_MAX, ARENA_MAX, "M_ARENA_MAX"),
    ] {
        // SAFETY: mallopt takes two integers and changes glibc's own
        // settings under its lock; no pointer is involved.
        let done = unsafe { nix::libc::mallopt(param, value as nix::libc::c_int) };
        if done != 1 {
            log::debug!("mallopt({name}, {value}) refused");
        }
    }
}

/// Other allocators decide for themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

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
