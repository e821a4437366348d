//! The state writer: one thread of its own that writes the state files
//! ([`crate::persist`]: serialize, temp file, fsync, rename, fsync of the
//! directory) off the event loop, one [`Write`] at a time. Which commits
//! wait for which write is decided in [`super::saves`]; this only does the
//! I/O.
//!
//! The records are taken on the loop when a write starts ([`records`]: a
//! walk over the parents and a copy of the userspace ones, as the inline
//! save did): the thread never holds a registry snapshot, so the loop's
//! next change to the registry never has to copy it (with a thousand
//! kernel parents that copy cost more than a write to a tmpfs).
//!
//! A thread of its own rather than the blocking pool: a save never waits
//! for a pool thread behind readers' replies or a scan, and the thread
//! sleeps in `recv` when there is nothing to write.
//!
//! Except on a memory file system: a state file on tmpfs (`/run/mdevreg`,
//! where the owner-bound file lives) is written on the loop, because there
//! the write is a memory copy and `fsync` returns at once, while the hand-over
//! to the thread and back costs two thread wake-ups per write.
//! Measured with `MDEVREG_BENCH_PHASES=rate cargo bench --bench e2e` (state
//! on tmpfs) on the shared 2-core machine: before, 1,200 register cycles/s
//! against the bare responder's 2,051; after, 1,684/1,619, 1,615/3,322 and
//! 864/1,473 (load 4-5, too noisy for one figure; the saving per cycle is
//! the two wake-ups). The outcome still comes back
//! through [`StateWriter::done`], so the order of a commit's steps is the same.

use std::io;
use std::path::Path;
use std::sync::{mpsc as std_mpsc, Arc};

use tokio::sync::mpsc;

use super::saves::{Write, Written};
use crate::model::Lifetime;
use crate::persist::{StateStore, StateStores, StoredRegistration};
use crate::registry::Registry;

/// One state file to write: its records and the registry's sequence number.
pub struct FileContent {
    pub lifetime: Lifetime,
    pub seqnum: u64,
    pub records: Vec<StoredRegistration>,
}

/// Hands writes to the writer thread and gets them back done.
pub struct StateWriter {
    jobs: std_mpsc::Sender<(WriteId, Vec<FileContent>)>,
    /// The stores, for the writes made on the loop.
    stores: StateStores,
    /// Which lifetimes' files are on a memory file system (written inline).
    in_memory: Vec<Lifetime>,
    /// For a write the thread cannot take: reported failed, like any.
    failed: mpsc::UnboundedSender<Written>,
    pub done: mpsc::UnboundedReceiver<Written>,
}

type WriteId = super::saves::WriteId;

impl StateWriter {
    /// Starts the writer thread for `stores`; it ends when the
    /// `StateWriter` is dropped.
    pub fn start(stores: StateStores) -> io::Result<StateWriter> {
        let (jobs, job_rx) = std_mpsc::channel::<(WriteId, Vec<FileContent>)>();
        let (done_tx, done) = mpsc::unbounded_channel();
        let failed = done_tx.clone();
        let in_memory = [Lifetime::Owner, Lifetime::Persistent]
            .into_iter()
            .filter(|&lifetime| {
                stores
                    .for_lifetime(lifetime)
                    .is_some_and(|store| on_memory_fs(store.path()))
            })
            .collect();
        let thread_stores = stores.clone();
        std::thread::Builder::new()
            .name("mdevreg-state".to_owned())
            .spawn(move || {
                while let Ok((id, files)) = job_rx.recv() {
                    let failed = outcome(write(&thread_stores, files));
                    if done_tx.send(Written { id, failed }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(StateWriter {
            jobs,
            stores,
            in_memory,
            failed,
            done,
        })
    }

    /// Starts `write` of the registry as `registry` shows it now. If the
    /// thread is gone (it never ends on its own), the write comes back
    /// failed, so nobody waits for it forever.
    pub fn start_write(&self, write: Write, registry: &Registry) {
        let files = records(registry, &write.lifetimes);
        if write
            .lifetimes
            .iter()
            .all(|lifetime| self.in_memory.contains(lifetime))
        {
            let failed = outcome(self::write(&self.stores, files));
            let _ = self.failed.send(Written {
                id: write.id,
                failed,
            });
            return;
        }
        if self.jobs.send((write.id, files)).is_err() {
            let gone = Arc::new(io::Error::other("the state writer thread is gone"));
            let failed = write
                .lifetimes
                .iter()
                .map(|&lifetime| (lifetime, Arc::clone(&gone)))
                .collect();
            let _ = self.failed.send(Written {
                id: write.id,
                failed,
            });
        }
    }
}

/// The content of the state files of `lifetimes`, from `registry`.
pub fn records(registry: &Registry, lifetimes: &[Lifetime]) -> Vec<FileContent> {
    lifetimes
        .iter()
        .map(|&lifetime| FileContent {
            lifetime,
            seqnum: registry.seqnum(),
            // The userspace parents' index: not a walk over every parent
            // (this runs on the loop).
            records: registry
                .userspace_parents()
                .filter(|parent| parent.lifetime == lifetime)
                .map(|parent| StoredRegistration {
                    parent: parent.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The failures among `results`.
fn outcome(results: Vec<(Lifetime, io::Result<()>)>) -> Vec<(Lifetime, Arc<io::Error>)> {
    results
        .into_iter()
        .filter_map(|(lifetime, result)| result.err().map(|err| (lifetime, Arc::new(err))))
        .collect()
}

/// Whether `path` (a state file, or the nearest directory above it that
/// exists) is on tmpfs. Unknown counts as not: the thread writes.
fn on_memory_fs(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    path.ancestors()
        .skip(1)
        .find_map(|dir| statfs(dir).ok())
        .is_some_and(|fs| fs.filesystem_type() == TMPFS_MAGIC)
}

/// Writes `files` to their stores; the outcome of each.
pub fn write(stores: &StateStores, files: Vec<FileContent>) -> Vec<(Lifetime, io::Result<()>)> {
    files
        .into_iter()
        .filter_map(|file| {
            let store: &StateStore = stores.for_lifetime(file.lifetime)?;
            let result = store.save(file.seqnum, &file.records).map_err(|err| {
                io::Error::new(err.kind(), format!("{}: {err}", store.path().display()))
            });
            Some((file.lifetime, result))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_on_tmpfs_is_written_on_the_callers_thread() {
        // /dev/shm is a tmpfs on Linux; the tests' temp dir usually is not.
        assert!(on_memory_fs(Path::new("/dev/shm/mdevreg-test/owner.json")));
        assert!(!on_memory_fs(Path::new("/proc/self/owner.json")));
        let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir on /dev/shm");
        let mut writer = StateWriter::start(StateStores::in_dir(dir.path())).expect("writer");
        let registry = Registry::new();
        writer.start_write(
            Write {
                id: 7,
                lifetimes: vec![Lifetime::Owner],
            },
            &registry,
        );
        // Done before start_write returned: no thread was involved.
        let written = writer.done.try_recv().expect("written inline");
        assert_eq!(written.id, 7);
        assert!(written.failed.is_empty(), "{:?}", written.failed);
        assert!(dir.path().join(crate::persist::OWNER_STATE_FILE).is_file());
    }

    #[test]
    fn a_failed_inline_write_comes_back_failed() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir on /dev/shm");
        // A file where the state directory should be: no write can succeed.
        let blocked = dir.path().join("state");
        std::fs::write(&blocked, b"not a directory").expect("file");
        let mut writer = StateWriter::start(StateStores::in_dir(&blocked)).expect("writer");
        writer.start_write(
            Write {
                id: 1,
                lifetimes: vec![Lifetime::Owner],
            },
            &Registry::new(),
        );
        let written = writer.done.try_recv().expect("written inline");
        assert_eq!(written.failed.len(), 1);
        assert_eq!(written.failed[0].0, Lifetime::Owner);
    }
}
