//! Log setup for the binaries: the `log` facade goes to journald when stderr
//! is connected to the journal, else to stderr as `PROGRAM: LEVEL target: msg`.
//! zbus and busd emit `tracing` events, which reach `log` (tracing's `log`
//! feature, no subscriber installed); they are kept at warn unless `-vv`.

use std::io::{self, Write};
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

/// Which records pass, by target and verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetFilter {
    /// Level for mdevreg's own targets (`mdevreg`, `mdevregd`, `mdevreg::*`).
    pub own: LevelFilter,
    /// Level for every other target (zbus, busd, zruntime, tracing spans...).
    pub dependencies: LevelFilter,
}

impl TargetFilter {
    /// 0: info (dependencies warn), 1: debug (dependencies warn), 2+: trace for all.
    pub fn for_verbosity(verbosity: u8) -> Self {
        match verbosity {
            0 => TargetFilter {
                own: LevelFilter::Info,
                dependencies: LevelFilter::Warn,
            },
            1 => TargetFilter {
                own: LevelFilter::Debug,
                dependencies: LevelFilter::Warn,
            },
            _ => TargetFilter {
                own: LevelFilter::Trace,
                dependencies: LevelFilter::Trace,
            },
        }
    }

    /// The most verbose level any target gets, for `log::set_max_level`.
    pub fn max_level(&self) -> LevelFilter {
        self.own.max(self.dependencies)
    }

    pub fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let limit = if is_own_target(metadata.target()) {
            self.own
        } else {
            self.dependencies
        };
        metadata.level() <= limit
    }
}

/// Targets of this crate and its binaries: `mdevreg`, `mdevregd`,
/// `mdevreg_uevent_writer`, `mdevreg::...`.
fn is_own_target(target: &str) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    matches!(crate_name, "mdevreg" | "mdevregd" | "mdevreg_uevent_writer")
}

/// Installs the global logger: journald if connected to it, else stderr.
/// Does nothing if a logger is installed already.
pub fn init(verbosity: u8) {
    let filter = TargetFilter::for_verbosity(verbosity);
    if systemd_journal_logger::connected_to_journal() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                if install(Box::new(Filtered {
                    filter,
                    inner: journal,
                }))
                .is_ok()
                {
                    log::set_max_level(filter.max_level());
                }
                return;
            }
            Err(err) => {
                // Fall back to stderr, which the journal collects anyway.
                let _ = writeln!(io::stderr(), "cannot open journal socket: {err}");
            }
        }
    }
    let _ = init_to(verbosity, Box::new(io::stderr()));
}

/// Installs a logger writing text lines to `writer` (stderr in [`init`]),
/// one per record: `PROGRAM: LEVEL target: message`.
pub fn init_to(verbosity: u8, writer: Box<dyn Write + Send>) -> Result<(), SetLoggerError> {
    let filter = TargetFilter::for_verbosity(verbosity);
    install(Box::new(Filtered {
        filter,
        inner: TextLogger {
            program: program_name(),
            writer: Mutex::new(writer),
        },
    }))?;
    log::set_max_level(filter.max_level());
    Ok(())
}

fn install(logger: Box<dyn Log>) -> Result<(), SetLoggerError> {
    log::set_boxed_logger(logger)
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mdevreg".to_owned())
}

/// Applies a [`TargetFilter`] in front of another logger.
struct Filtered<L> {
    filter: TargetFilter,
    inner: L,
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.filter.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Writes `PROGRAM: LEVEL target: message` lines.
struct TextLogger {
    program: String,
    writer: Mutex<Box<dyn Write + Send>>,
}

impl Log for TextLogger {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let line = format_line(&self.program, record);
        // A poisoned lock only means another thread panicked mid-write; the
        // writer itself is still usable.
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Nowhere to report a failed log write.
        let _ = writer.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writer.flush();
    }
}

fn format_line(program: &str, record: &Record<'_>) -> String {
    // One record, one line: embedded newlines would forge log lines.
    let message = record.args().to_string().replace('\n', "\\n");
    format!(
        "{program}: {:<5} {}: {message}\n",
        record.level(),
        record.target()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    fn passes(filter: TargetFilter, target: &str, level: Level) -> bool {
        filter.enabled(&Metadata::builder().target(target).level(level).build())
    }

    #[test]
    fn verbosity_levels() {
        let quiet = TargetFilter::for_verbosity(0);
        assert!(passes(quiet, "mdevreg::daemon", Level::Info));
        assert!(passes(quiet, "mdevregd", Level::Info));
        assert!(!passes(quiet, "mdevreg::daemon", Level::Debug));
        assert!(!passes(quiet, "zbus::connection", Level::Info));
        assert!(passes(quiet, "zbus::connection", Level::Warn));
        assert!(!passes(quiet, "mdevregx", Level::Info));

        let verbose = TargetFilter::for_verbosity(1);
        assert!(passes(verbose, "mdevreg::daemon", Level::Debug));
        assert!(!passes(verbose, "mdevreg::daemon", Level::Trace));
        assert!(!passes(verbose, "busd::peer", Level::Info));
        assert_eq!(verbose.max_level(), LevelFilter::Debug);

        let very = TargetFilter::for_verbosity(2);
        assert!(passes(very, "mdevreg", Level::Trace));
        assert!(passes(very, "zbus::connection", Level::Trace));
        assert_eq!(TargetFilter::for_verbosity(9), very);
    }

    #[test]
    fn line_format() {
        let line = format_line(
            "mdevregd",
            &Record::builder()
                .target("mdevreg::persist")
                .level(Level::Warn)
                .args(format_args!("two\nlines"))
                .build(),
        );
        assert_eq!(line, "mdevregd: WARN  mdevreg::persist: two\\nlines\n");
    }
}
