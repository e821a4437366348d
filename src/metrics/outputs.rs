//! The daemon's side of the metrics: starts the ways out it was asked for
//! (`--metrics-listen`, `--metrics-textfile`) on one [`MetricsSource`], and
//! is told when something changed ([`MetricsOutputs::changed`], cheap: the
//! event loop calls it after each commit, the uevent reader after each
//! event).
//!
//! The listener runs on its own thread (see [`super::http`]). The textfile
//! is rewritten by a task that waits for a change, lets further changes
//! within [`TEXTFILE_DELAY`] join it, then renders and writes on a blocking
//! thread: a burst of uevents costs one rewrite, and nothing is rendered
//! or written on the event loop. Counters that move without reaching the
//! loop (rejected netlink messages) are picked up every
//! [`TEXTFILE_REFRESH`]; the file is only rewritten when its text changed.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::http::{ExpositionSource, Limits, MetricsListener};
use super::textfile::TextfileWriter;
use super::{Format, MetricsSource};

/// How long the textfile writer waits for more changes before writing.
pub const TEXTFILE_DELAY: Duration = Duration::from_millis(200);
/// How often the textfile writer looks at the counters without being told.
pub const TEXTFILE_REFRESH: Duration = Duration::from_secs(30);

/// What the daemon was asked to expose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    pub textfile: Option<PathBuf>,
}

impl MetricsConfig {
    pub fn is_enabled(&self) -> bool {
        self.listen.is_some() || self.textfile.is_some()
    }
}

/// Why the metrics outputs could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for metrics: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot write metrics to {}: {source}", path.display())]
    Textfile { path: PathBuf, source: io::Error },
}

/// The running outputs; dropping it stops them.
pub struct MetricsOutputs {
    changed: Arc<Notify>,
    listener: Option<MetricsListener>,
    textfile_task: Option<tokio::task::JoinHandle<()>>,
}

impl MetricsOutputs {
    /// Starts what `config` asks for, serving `source`; must run inside
    /// the daemon's tokio runtime (the textfile task lives there). The
    /// textfile is written once before this returns, so a path that cannot
    /// be written fails the start.
    pub async fn start(
        config: &MetricsConfig,
        source: Arc<MetricsSource>,
    ) -> Result<MetricsOutputs, MetricsError> {
        let changed = Arc::new(Notify::new());
        let listener = match config.listen {
            Some(addr) => {
                let bound = MetricsListener::bind(addr)
                    .and_then(|std| MetricsListener::spawn(std, source.clone(), Limits::default()))
                    .map_err(|source| MetricsError::Listen { addr, source })?;
                log::info!("serving metrics on http://{}/metrics", bound.local_addr());
                Some(bound)
            }
            None => None,
        };
        let textfile_task = match &config.textfile {
            Some(path) => {
                let failed = |source| MetricsError::Textfile {
                    path: path.clone(),
                    source,
                };
                let mut writer = TextfileWriter::new(path).map_err(failed)?;
                let first = Arc::clone(&source);
                let (result, writer) = tokio::task::spawn_blocking(move || {
                    let result = writer.write(&first.exposition(Format::Text));
                    (result, writer)
                })
                .await
                .map_err(|err| failed(io::Error::other(err)))?;
                result.map_err(failed)?;
                log::info!("writing metrics to {}", path.display());
                Some(tokio::spawn(rewrite_on_change(
                    writer,
                    source,
                    Arc::clone(&changed),
                )))
            }
            None => None,
        };
        Ok(MetricsOutputs {
            changed,
            listener,
            textfile_task,
        })
    }

    /// Something the metrics show may have changed.
    pub fn changed(&self) {
        if self.textfile_task.is_some() {
            self.changed.notify_one();
        }
    }

    /// The listener's address, if listening.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(MetricsListener::local_addr)
    }

    /// A handle the uevent reader can hold to report changes.
    pub fn notifier(&self) -> ChangeNotifier {
        ChangeNotifier(
            self.textfile_task
                .is_some()
                .then(|| Arc::clone(&self.changed)),
        )
    }
}

impl Drop for MetricsOutputs {
    fn drop(&mut self) {
        if let Some(task) = self.textfile_task.take() {
            task.abort();
        }
    }
}

/// [`MetricsOutputs::changed`] for other tasks; does nothing without a
/// textfile.
#[derive(Clone, Debug, Default)]
pub struct ChangeNotifier(Option<Arc<Notify>>);

impl ChangeNotifier {
    pub fn changed(&self) {
        if let Some(notify) = &self.0 {
            notify.notify_one();
        }
    }
}

async fn rewrite_on_change(
    mut writer: TextfileWriter,
    source: Arc<MetricsSource>,
    changed: Arc<Notify>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(TEXTFILE_DELAY).await,
            () = tokio::time::sleep(TEXTFILE_REFRESH) => {}
        }
        let render = Arc::clone(&source);
        let joined = tokio::task::spawn_blocking(move || {
            let result = writer.write(&render.exposition(Format::Text));
            (result, writer)
        })
        .await;
        let Ok((result, back)) = joined else {
            log::error!("metrics textfile writer stopped");
            return;
        };
        writer = back;
        match result {
            Ok(_) if failing => {
                failing = false;
                log::info!("writing {} again", writer.path().display());
            }
            Ok(_) => {}
            Err(err) if !failing => {
                failing = true;
                log::warn!("cannot write metrics to {}: {err}", writer.path().display());
            }
            Err(_) => {}
        }
    }
}
