//! Bounds on large read-only replies (`GetManagedObjects`, the `Dump*`
//! documents, `ListParents`): at most [`PER_UID`] at a time per caller uid
//! and [`TOTAL`] in all. They are built on a blocking thread from the
//! registry snapshot, so they never hold up the event loop or a writer;
//! these bounds keep readers from taking the memory (each reply of the
//! 1000 × 32 tree is megabytes until the bus has read it) or every
//! blocking thread. A caller over its bound waits (its call is a few bytes
//! meanwhile); nothing is refused.
//!
//! Writers go first: a built large reply is not put on the bus socket
//! while a `RegisterParent`/`UnregisterParent` is waiting for its answer
//! ([`WritersFirst`]). Once a reply of megabytes is on the socket,
//! everything the daemon sends after it (signals, the answer to a root
//! call) waits until the bus has read all of it — dbus-daemon reads a few
//! KiB per turn of its loop — so a writer's answer must not land behind
//! one that started while the writer was being served.
//!
//! A large reply keeps its turn until the bus has read it whole (a call to
//! the bus driver queued behind it has come back), not only until its last
//! byte is in the socket: the next one is then neither built while the bus
//! still reads this one (on a two-core machine the build takes CPU the bus
//! needs) nor queued right behind it, where a writer's answer would wait
//! for both. What remains is the floor: a write answered while a reply
//! is being read waits for the rest of it (dbus-daemon reads a connection
//! 4 KiB per turn of its loop; a 17 MiB reply takes 100–400 ms on the test
//! machine, as long for a bare responder: `tests/readers_vs_writers.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::lock;

/// Large replies being built or sent for one uid, at most.
pub const PER_UID: usize = 1;
/// Large replies being built or sent in all, at most. One: a reply of the
/// 1000 × 32 tree is 17 MiB and needs twice that while it is built (zbus
/// serializes the body, then copies it behind the header); two at a time
/// took the daemon from 30 to 78 MiB (release). They all leave on the one
/// bus socket anyway, one after the other. Callers queue per uid first, so
/// uids take turns: one uid's forty calls hold up another uid's call by one
/// reply, not forty.
pub const TOTAL: usize = 1;

/// A built large reply waits at most this long for writers to be
/// answered (so a stream of writes cannot starve readers).
pub const WRITERS_FIRST_MAX: Duration = Duration::from_millis(250);

/// A reply of at least this many bytes keeps its turn until the bus has
/// read it whole (see [`ReaderLimits`]).
pub const READ_WHOLE_MIN_BYTES: usize = 1024 * 1024;

/// ... but no longer than this.
pub const READ_WHOLE_MAX: Duration = Duration::from_secs(5);

/// Methods whose answer large replies let go first.
pub fn is_write(member: &str) -> bool {
    matches!(member, "RegisterParent" | "UnregisterParent")
}

/// Writes received and not yet answered.
#[derive(Debug, Default)]
pub struct WritersFirst {
    pending: AtomicUsize,
    idle: Notify,
}

impl WritersFirst {
    /// A write was received.
    pub fn enter(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// `count` writes were answered.
    pub fn answered(&self, count: usize) {
        if count == 0 {
            return;
        }
        let before = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pending| {
                Some(pending.saturating_sub(count))
            })
            .unwrap_or(0);
        if before <= count {
            self.idle.notify_waiters();
        }
    }

    /// Writes waiting for their answer.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Returns once no write is waiting for its answer, or after `max`.
    pub async fn wait_idle(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            // Created before the check, so an answer in between wakes it.
            let idle = self.idle.notified();
            if self.pending() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// Methods whose reply grows with the registry.
pub fn is_large(member: &str) -> bool {
    matches!(
        member,
        "GetManagedObjects"
            | "DumpTypes"
            | "DumpTypesByFileDescriptor"
            | "DumpParentsByFileDescriptor"
            | "ListParents"
    )
}

/// The semaphores.
#[derive(Debug)]
pub struct ReaderLimits {
    total: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

/// The right to build and send one large reply; dropped once it is sent.
#[derive(Debug)]
pub struct ReadPermit {
    _uid: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            total: Arc::new(Semaphore::new(TOTAL)),
            per_uid: Mutex::new(HashMap::new()),
        }
    }
}

impl ReaderLimits {
    /// Waits for a turn of `uid` (`None`: unknown uid, one shared bucket),
    /// then for a turn overall.
    pub async fn acquire(&self, uid: Option<u32>) -> ReadPermit {
        let bucket = Arc::clone(
            lock(&self.per_uid)
                .entry(uid.unwrap_or(u32::MAX))
                .or_insert_with(|| Arc::new(Semaphore::new(PER_UID))),
        );
        // Never closed: acquiring cannot fail.
        let uid_permit = bucket
            .acquire_owned()
            .await
            .expect("reader semaphores are never closed");
        let total = Arc::clone(&self.total)
            .acquire_owned()
            .await
            .expect("reader semaphores are never closed");
        ReadPermit {
            _uid: uid_permit,
            _total: total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_replies_wait_for_writes_to_be_answered_but_not_forever() {
        let writers = Arc::new(WritersFirst::default());
        // Nothing pending: at once.
        tokio::time::timeout(
            Duration::from_secs(10),
            writers.wait_idle(Duration::from_secs(60)),
        )
        .await
        .expect("no write pending");
        writers.enter();
        writers.enter();
        let waiting = {
            let writers = Arc::clone(&writers);
            tokio::spawn(async move { writers.wait_idle(Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "two writes pending");
        writers.answered(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one write pending");
        writers.answered(1);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("all writes answered")
            .expect("task");
        // Never below zero; a stream of writes holds a reader up to `max`.
        writers.answered(5);
        assert_eq!(writers.pending(), 0);
        writers.enter();
        let started = std::time::Instant::now();
        writers.wait_idle(Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(is_write("RegisterParent") && !is_write("Rescan"));
    }

    #[tokio::test]
    async fn one_large_reply_at_a_time_and_uids_take_turns() {
        let limits = Arc::new(ReaderLimits::default());
        let first = limits.acquire(Some(65534)).await;
        // The same uid queues behind its own call...
        let same = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.acquire(Some(65534)).await })
        };
        // ...another uid behind the one reply under way.
        let other = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.acquire(Some(0)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !same.is_finished(),
            "a second large reply of one uid must wait"
        );
        assert!(!other.is_finished(), "at most {TOTAL} in all");
        // The other uid goes next, before the first uid's second call.
        drop(first);
        let other = tokio::time::timeout(Duration::from_secs(10), other)
            .await
            .expect("the other uid's turn")
            .expect("task");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!same.is_finished(), "the other uid's reply is under way");
        drop(other);
        let same = tokio::time::timeout(Duration::from_secs(10), same)
            .await
            .expect("then the first uid again")
            .expect("task");
        drop(same);
        assert!(is_large("GetManagedObjects") && !is_large("GetParent"));
    }
}
