//! mdevregd: the mdev parent registry service. A thin entry point: parse the
//! command line, set up logging, connect (or host an embedded bus), run the
//! daemon until SIGTERM/SIGINT or the loss of the bus.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use futures_util::StreamExt;
use mdevreg::bus_host::EmbeddedBus;
use mdevreg::cli::MdevregdCli;
use mdevreg::daemon::{self, BusChoice, Config};
use mdevreg::dbus::auth::AuthPolicy;
use mdevreg::label;
use mdevreg::logging;
use mdevreg::metrics::outputs::MetricsConfig;
use mdevreg::paths::SysfsRoot;
use mdevreg::persist::{StateDirs, StateStores};

fn main() -> ExitCode {
    daemon::tune_allocator();
    let cli = MdevregdCli::parse();
    logging::init(cli.verbose);
    // Threads and memory, one story:
    // - one async thread runs the event loop, the D-Bus server and the
    //   sources: their work per input is short and serial anyway;
    // - everything that can take long runs on tokio's blocking pool, capped
    //   at BLOCKING_THREADS: full sysfs scans (which fan out on scoped
    //   threads of their own, up to the core count, while they run), and
    //   large read-only replies built from the registry snapshot (at most
    //   `dbus::readers::TOTAL` — one — at a time, uids taking turns); a
    //   full scan and a large reply being built take turns
    //   (`daemon::memory_turn`): each needs megabytes while it runs;
    // - one thread of its own writes the state files (`daemon::writer`),
    //   one grouped write at a time, so a save never waits for a pool
    //   thread; it sleeps while there is nothing to write (files on
    //   tmpfs are written on the loop: a memory copy, cheaper than the
    //   two wake-ups of the hand-over);
    // - glibc gets a fixed mmap threshold and at most 2 malloc arenas
    //   (`daemon::tune_allocator`, first thing): a fresh large buffer is a
    //   mapping of its own, unmapped when it is freed;
    // - what still lands in the arenas (the start-up scan's buffers, a
    //   reply's growing buffer carved from a free hole, the small
    //   allocations of a burst) is handed back by malloc_trim: once after
    //   start-up, after every reply of at least 1 MiB, and once the loop
    //   has been idle for a second (`daemon::trim`). The mdev types' texts
    //   are shared between parents (`model::SharedStr`).
    const BLOCKING_THREADS: usize = 4;
    const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
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
    let euid = nix::unistd::geteuid().as_raw();
    let dirs = match StateDirs::resolve(
        cli.runtime_dir.as_deref(),
        cli.state_dir.as_deref(),
        euid,
        |name| std::env::var_os(name),
    ) {
        Ok(dirs) => dirs,
        Err(err) => {
            log::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "state in {} (owner-bound) and {} (persistent)",
        dirs.runtime.display(),
        dirs.state.display()
    );
    let mut choice = BusChoice::parse(&cli.bus);
    // On a bus of its own user the daemon's uid may register too.
    let own_bus = matches!(choice, BusChoice::Session | BusChoice::Embedded(_));
    let mut embedded = None;
    if let BusChoice::Embedded(address) = &choice {
        let bus = match EmbeddedBus::start(address.as_deref()) {
            Ok(bus) => bus,
            Err(err) => {
                log::error!("cannot start the embedded bus: {err}");
                return ExitCode::FAILURE;
            }
        };
        log::info!("hosting an embedded bus at {}", bus.address());
        drop_owner_bound_state(&dirs.runtime);
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
        stores: StateStores::new(&dirs),
        emit: cli.emit,
        netlink: !cli.no_netlink,
        receive_buffer: cli.receive_buffer,
        auth: AuthPolicy::new(own_bus, euid),
        runtime_dir: dirs.runtime.clone(),
        poll_interval: cli.poll_interval,
        metrics: MetricsConfig {
            listen: cli.metrics_listen,
            textfile: cli.metrics_textfile.clone(),
        },
        uevent_writer: cli.uevent_writer.clone(),
    };
    // The address is printed once the registry is served: busd drops calls
    // to a name nobody owns yet without an error reply, so a client started
    // on an earlier printout would wait for its call to time out.
    let announce = embedded.as_ref().map(|bus| {
        tokio::spawn(print_address_when_served(
            connection.clone(),
            bus.address().to_owned(),
        ))
    });
    let result = daemon::run(connection, config, shutdown).await;
    if let Some(task) = announce {
        task.abort();
    }
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

/// Owner-bound registrations live as long as their owner's connection: on a
/// new embedded bus none of a previous run's owners can be there, and the
/// new bus hands out the same unique names again (`:busd.5` may be someone
/// else now), so their state file is removed instead of restored.
fn drop_owner_bound_state(runtime_dir: &std::path::Path) {
    let file = runtime_dir.join(mdevreg::persist::OWNER_STATE_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => log::info!(
            "new embedded bus: owner-bound registrations of the previous one dropped ({})",
            file.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => log::warn!("cannot remove {}: {err}", file.display()),
    }
}

/// Prints `address` alone on the first line of stdout, for whoever started
/// the daemon, as soon as the registry's bus name has an owner.
async fn print_address_when_served(connection: zbus::Connection, address: String) {
    let served = async {
        let bus = zbus::fdo::DBusProxy::new(&connection).await?;
        let mut owners = bus
            .receive_name_owner_changed_with_args(&[(0, label::BUS_NAME)])
            .await?;
        let name = zbus::names::BusName::from(
            zbus::names::WellKnownName::from_static_str_unchecked(label::BUS_NAME),
        );
        if !bus.name_has_owner(name).await? {
            while let Some(change) = owners.next().await {
                if change.args().is_ok_and(|args| args.new_owner().is_some()) {
                    break;
                }
            }
        }
        zbus::fdo::Result::Ok(())
    };
    if let Err(err) = served.await {
        log::warn!("cannot watch the bus name ({err}); printing the bus address now");
    }
    let mut stdout = std::io::stdout().lock();
    let printed = writeln!(stdout, "{address}").and_then(|()| stdout.flush());
    if let Err(err) = printed {
        log::warn!("cannot print the bus address: {err}");
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
