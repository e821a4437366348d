//! Bounds on large read-only replies (`GetManagedObjects`, the `Dump*`
//! documents, `ListParents`): at most [`PER_UID`] at a time per caller uid
//! and [`TOTAL`] in all. They are built on a blocking thread from the
//! registry snapshot, so they never hold up the event loop or a writer;
//! these bounds keep readers from taking the memory (each reply of the
//! 1000 × 32 tree is megabytes until the bus has read it) or every
//! blocking thread. A caller over its bound waits (its call is a few bytes
//! meanwhile); nothing is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::lock;

/// Large replies being built or sent for one uid, at most.
pub const PER_UID: usize = 1;
/// Large replies being built or sent in all, at most.
pub const TOTAL: usize = 2;

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
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_uid_waits_for_its_own_turn_not_for_others() {
        let limits = ReaderLimits::default();
        let first = limits.acquire(Some(65534)).await;
        // The same uid waits...
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), limits.acquire(Some(65534))).await;
        assert!(
            waiting.is_err(),
            "a second large reply of one uid must wait"
        );
        // ...another uid does not.
        let other = tokio::time::timeout(Duration::from_secs(10), limits.acquire(Some(0))).await;
        let other = other.expect("another uid has its own turn");
        // Both overall turns are taken now.
        let third = tokio::time::timeout(Duration::from_millis(50), limits.acquire(Some(7))).await;
        assert!(third.is_err(), "at most {TOTAL} in all");
        drop(first);
        drop(other);
        tokio::time::timeout(Duration::from_secs(10), limits.acquire(Some(65534)))
            .await
            .expect("free again");
        assert!(is_large("GetManagedObjects") && !is_large("GetParent"));
    }
}
