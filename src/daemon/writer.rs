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

use std::io;
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
        std::thread::Builder::new()
            .name("mdevreg-state".to_owned())
            .spawn(move || {
                while let Ok((id, files)) = job_rx.recv() {
                    let failed = write(&stores, files)
                        .into_iter()
                        .filter_map(|(lifetime, result)| {
                            result.err().map(|err| (lifetime, Arc::new(err)))
                        })
                        .collect();
                    if done_tx.send(Written { id, failed }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(StateWriter { jobs, failed, done })
    }

    /// Starts `write` of the registry as `registry` shows it now. If the
    /// thread is gone (it never ends on its own), the write comes back
    /// failed, so nobody waits for it forever.
    pub fn start_write(&self, write: Write, registry: &Registry) {
        let files = records(registry, &write.lifetimes);
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
