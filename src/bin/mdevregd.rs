//! mdevregd: the mdev parent registry service. A thin entry point: parse the
//! command line, set up logging, connect (or host an embedded bus), run the
//! daemon until SIGTERM/SIGINT or the loss of the bus.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use mdevreg::bus_host::EmbeddedBus;
use mdevreg::cli::MdevregdCli;
use mdevreg::daemon::{self, BusChoice, Config};
use mdevreg::logging;
use mdevreg::paths::SysfsRoot;
use mdevreg::persist::{StateDirs, StateStores, OWNER_STATE_DIR, PERSISTENT_STATE_DIR};

fn main() -> ExitCode {
    let cli = MdevregdCli::parse();
    logging::init(cli.verbose);
    // One thread: the event loop is serial anyway, and every extra thread
    // gets its own malloc arena that keeps its peak after a burst of calls.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    // Tasks still blocked on sockets must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(cli: MdevregdCli) -> ExitCode {
    let mut choice = BusChoice::parse(&cli.bus);
    let mut embedded = None;
    if let BusChoice::Embedded(address) = &choice {
        let bus = match EmbeddedBus::start(address.as_deref()) {
            Ok(bus) => bus,
            Err(err) => {
                log::error!("cannot start the embedded bus: {err}");
                return ExitCode::FAILURE;
            }
        };
        // The address alone on its own line, for whoever started us.
        let mut stdout = std::io::stdout().lock();
        let printed = writeln!(stdout, "{}", bus.address()).and_then(|()| stdout.flush());
        if let Err(err) = printed {
            log::warn!("cannot print the bus address: {err}");
        }
        log::info!("hosting an embedded bus at {}", bus.address());
        choice = BusChoice::Address(bus.address().to_owned());
        embedded = Some(bus);
    }
    let connection = match choice.connect().await {
        Ok(connection) => connection,
        Err(err) => {
            log::error!("cannot connect to the {} bus: {err}", cli.bus);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            log::error!("cannot watch SIGTERM/SIGINT: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        sysfs_root: SysfsRoot::new(&cli.sysfs_root),
        stores: match cli.state_dir.as_deref() {
            Some(dir) => StateStores::in_dir(dir),
            None => StateStores::new(&StateDirs {
                runtime: OWNER_STATE_DIR.into(),
                state: PERSISTENT_STATE_DIR.into(),
            }),
        },
        emit: cli.emit,
        netlink: !cli.no_netlink,
        receive_buffer: cli.receive_buffer,
    };
    let result = daemon::run(connection, config, shutdown).await;
    if let Some(bus) = embedded {
        bus.stop();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        log::info!("{name} received, shutting down");
    })
}
