//! The state writer: one thread of its own that writes the state files
//! ([`crate::persist`]: temp file, fsync, rename, fsync of the directory)
//! off the event loop, one [`Write`] at a time, from the registry snapshot
//! it is handed. Which commits wait for which write is decided in
//! [`super::saves`]; this only does the I/O.
//!
//! A thread of its own rather than the blocking pool: a save never waits
//! for a pool thread behind readers' replies or a scan, and the thread
//! sleeps in `recv` when there is nothing to write.

use std::io;
use std::sync::{mpsc as std_mpsc, Arc};

use tokio::sync::mpsc;

use super::saves::{Write, Written};
use crate::model::Lifetime;
use crate::persist::{StateStores, StoredRegistration};
use crate::registry::Registry;

/// Hands writes to the writer thread and gets them back done.
pub struct StateWriter {
    jobs: std_mpsc::Sender<(Write, Arc<Registry>)>,
    pub done: mpsc::UnboundedReceiver<Written>,
}

impl StateWriter {
    /// Starts the writer thread for `stores`; it ends when the
    /// `StateWriter` is dropped.
    pub fn start(stores: StateStores) -> io::Result<StateWriter> {
        let (jobs, job_rx) = std_mpsc::channel::<(Write, Arc<Registry>)>();
        let (done_tx, done) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("mdevreg-state".to_owned())
            .spawn(move || {
                while let Ok((write, registry)) = job_rx.recv() {
                    let failed = save(&stores, registry, &write.lifetimes)
                        .into_iter()
                        .filter_map(|(lifetime, result)| {
                            result.err().map(|err| (lifetime, Arc::new(err)))
                        })
                        .collect();
                    if done_tx
                        .send(Written {
                            id: write.id,
                            failed,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(StateWriter { jobs, done })
    }

    /// Starts `write` of the registry as `registry` shows it.
    pub fn start_write(&self, write: Write, registry: Arc<Registry>) {
        let id = write.id;
        if self.jobs.send((write, registry)).is_err() {
            log::error!("the state writer is gone: write {id} not made");
        }
    }
}

/// Writes the state files of `lifetimes` from `registry`; the outcome of
/// each. The records are taken first and the snapshot let go before the
/// files are written, so the loop's next change to the registry does not
/// have to copy it meanwhile.
pub fn save(
    stores: &StateStores,
    registry: Arc<Registry>,
    lifetimes: &[Lifetime],
) -> Vec<(Lifetime, io::Result<()>)> {
    let seqnum = registry.seqnum();
    let files: Vec<_> = [&stores.owner, &stores.persistent]
        .into_iter()
        .filter(|store| lifetimes.contains(&store.lifetime()))
        .map(|store| {
            let records: Vec<StoredRegistration> = registry
                .userspace_parents()
                .filter(|parent| parent.lifetime == store.lifetime())
                .map(|parent| StoredRegistration {
                    parent: parent.clone(),
                })
                .collect();
            (store, records)
        })
        .collect();
    drop(registry);
    files
        .into_iter()
        .map(|(store, records)| {
            let result = store.save(seqnum, &records).map_err(|err| {
                io::Error::new(err.kind(), format!("{}: {err}", store.path().display()))
            });
            (store.lifetime(), result)
        })
        .collect()
}
