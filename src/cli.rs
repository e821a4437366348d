//! Command-line definitions of both binaries (clap types only), shared with the
//! man page and completion generator.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Query and drive the mdev parent registry.
#[derive(Parser, Debug)]
#[command(name = "mdevreg", version, about, long_about = None)]
pub struct MdevregCli {
    /// Bus to reach mdevregd on: `system`, `session` or a D-Bus address
    /// such as `unix:path=/run/x`.
    #[arg(long, global = true, env = "MDEVREG_BUS", default_value = "system")]
    pub bus: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List mdev types per parent (the shape of `mdevctl types`).
    Types {
        /// Only this parent.
        #[arg(long)]
        parent: Option<String>,
        /// Print the `mdevctl types --dumpjson` document.
        #[arg(long)]
        json: bool,
        /// Scan this sysfs root directly instead of asking the daemon.
        #[arg(long, value_name = "DIR")]
        sysfs_root: Option<PathBuf>,
        /// Which parents: `mdev` (the default: exactly mdevctl's output) or
        /// `all` (NVIDIA vendor-specific VFIO parents too, in the same shape).
        #[arg(long, value_enum, default_value = "mdev")]
        backend: BackendFilter,
    },
    /// vGPU capacity per physical GPU: for each type, how many more the
    /// GPU's parents (SR-IOV siblings) list as creatable now (an upper
    /// bound when sizes mix) and how many they hold.
    Capacity {
        #[arg(long)]
        json: bool,
        /// Scan this sysfs root directly instead of asking the daemon.
        #[arg(long, value_name = "DIR")]
        sysfs_root: Option<PathBuf>,
    },
    /// List parents with their types and active mdevs.
    List {
        #[arg(long)]
        json: bool,
        /// Scan this sysfs root directly instead of asking the daemon.
        #[arg(long, value_name = "DIR")]
        sysfs_root: Option<PathBuf>,
    },
    /// Show one parent.
    Show {
        /// Parent name.
        parent: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's counters (dropped uevents, rescans, ...).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print the registry (and the daemon's counters) as Prometheus metrics.
    Metrics {
        /// Scan this sysfs root directly instead of asking the daemon.
        #[arg(long, value_name = "DIR")]
        sysfs_root: Option<PathBuf>,
        /// OpenMetrics text instead of the Prometheus text format 0.0.4.
        #[arg(long)]
        openmetrics: bool,
    },
    /// Print one line per registry event until interrupted.
    Monitor {
        #[arg(long)]
        json: bool,
    },
    /// Register a userspace parent; owner-bound registrations last while
    /// this command runs.
    Register(RegisterArgs),
    /// Unregister a userspace parent.
    Unregister {
        /// Parent name.
        name: String,
    },
    /// Wait until a parent is registered (with a type, with available
    /// instances): exit 0 then, 1 on timeout naming what is missing.
    /// Subscribes before it checks and does not poll; with --sysfs-root it
    /// needs no daemon and watches kernel uevents.
    Wait(WaitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Parent name.
    pub parent: String,
    /// Wait until the parent has this mdev type.
    #[arg(long = "type", value_name = "ID")]
    pub type_id: Option<String>,
    /// Wait until the type (or, without --type, some type) has at least N
    /// available instances.
    #[arg(long, value_name = "N")]
    pub available: Option<u32>,
    /// Give up after this many seconds (fractions allowed; default: wait
    /// for ever).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<std::time::Duration>,
    /// Watch this sysfs root and kernel uevents instead of asking the daemon.
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
}

/// A non-negative number of seconds (`5`, `0.5`).
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} is not a non-negative number of seconds"))
}

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    /// Parent name: 1..=255 bytes of [A-Za-z0-9:._-].
    pub name: String,
    /// A type: ID,API,AVAIL[,NAME[,DESC]] (repeatable).
    #[arg(
        long = "type",
        value_name = "ID,API,AVAIL[,NAME[,DESC]]",
        required = true
    )]
    pub types: Vec<String>,
    /// Device path (default `/devices/virtual/mdevreg/<name>`). Its last
    /// component is the device's kernel name in udev rules (`$kernel`,
    /// e.g. in mdevctl's `/etc/mdevctl.d/$kernel`), not NAME.
    #[arg(long)]
    pub devpath: Option<String>,
    /// Subsystem (default `mdevreg`).
    #[arg(long)]
    pub subsystem: Option<String>,
    /// Driver name.
    #[arg(long)]
    pub driver: Option<String>,
    /// Keep the registration after this command exits, until unregistered.
    #[arg(long)]
    pub persistent: bool,
}

/// Which parents `types` shows.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendFilter {
    /// mdev parents only: the `mdevctl types` output.
    #[default]
    Mdev,
    /// Every backend (NVIDIA vendor-specific VFIO parents too).
    All,
}

/// How mdevregd tells the world about userspace transitions.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitMode {
    /// Injection when permitted, else libudev broadcast.
    Auto,
    /// Kernel uevent injection only.
    Inject,
    /// libudev-format broadcast on netlink group 2 only.
    Broadcast,
    /// No uevents (D-Bus signals only).
    None,
}

/// The mdev parent registry service.
#[derive(Parser, Debug)]
#[command(name = "mdevregd", version, about, long_about = None)]
pub struct MdevregdCli {
    /// `system`, `session`, `embedded[=ADDRESS]` (host a private bus and
    /// print its address) or a D-Bus address.
    #[arg(long, default_value = "system")]
    pub bus: String,
    /// Root of the sysfs tree to read (and write).
    #[arg(long, default_value = "/sys", value_name = "DIR")]
    pub sysfs_root: PathBuf,
    /// Directory of owner-bound state, cleared at boot [default:
    /// /run/mdevreg, or $XDG_RUNTIME_DIR/mdevreg when not run by root].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Directory of persistent state [default: /var/lib/mdevreg, or
    /// $XDG_STATE_HOME/mdevreg (~/.local/state/mdevreg) when not run by
    /// root].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How to emit uevents for userspace parents.
    #[arg(long, value_enum, default_value = "auto")]
    pub emit: EmitMode,
    /// Do not listen for kernel uevents (sysfs is read at start and on Rescan).
    #[arg(long)]
    pub no_netlink: bool,
    /// Receive buffer of the kernel uevent socket, in bytes (default 16 MiB).
    /// Small values make overflows (and the rescan after them) likely: for
    /// overflow tests and benchmarks.
    #[arg(long, value_name = "BYTES")]
    pub receive_buffer: Option<usize>,
    /// Seconds between checks of NVIDIA vendor-specific VFIO parents
    /// (placing a vGPU sends no uevent); fractions allowed, at least 0.01.
    /// Nothing is polled while there is no such parent.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_poll_interval)]
    pub poll_interval: std::time::Duration,
    /// Serve Prometheus metrics over HTTP (`GET /metrics`) on this
    /// address, e.g. `127.0.0.1:9850` (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Keep Prometheus metrics in this file (rewritten atomically on every
    /// change), for node_exporter's textfile collector, e.g.
    /// `/var/lib/prometheus/node-exporter/mdevreg.prom`.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
    /// Have the synthetic uevents of vendor-VFIO parents written by
    /// mdevreg-uevent-writer listening on this socket (for a read-only
    /// `/sys`), instead of writing them directly.
    #[arg(long, value_name = "SOCKET")]
    pub uevent_writer: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--poll-interval`: seconds (fractions allowed), 0.01 ..= 86400.
/// `mdevreg-uevent-writer`: writes the synthetic `change` uevents of NVIDIA
/// vendor-specific VFIO virtual functions for mdevregd, whose `/sys` is
/// read-only (started by mdevreg-uevent-writer.socket).
#[derive(Debug, Parser)]
#[command(name = "mdevreg-uevent-writer", version)]
pub struct UeventWriterCli {
    /// Root of the sysfs tree whose `devices/` it may write to.
    #[arg(long, default_value = "/sys", value_name = "DIR")]
    pub sysfs_root: PathBuf,
    /// Bind a socket at this path (mode 0600) instead of taking the one
    /// systemd passes.
    #[arg(long, value_name = "PATH")]
    pub listen: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_poll_interval(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text:?}"))?;
    if !(0.01..=86_400.0).contains(&seconds) {
        return Err(format!("{text} s is outside 0.01 ..= 86400"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_bounds() {
        assert_eq!(
            parse_poll_interval("2"),
            Ok(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            parse_poll_interval("0.5"),
            Ok(std::time::Duration::from_millis(500))
        );
        for bad in ["0", "-1", "x", "NaN", "1e9"] {
            assert!(parse_poll_interval(bad).is_err(), "{bad}");
        }
        let cli = MdevregdCli::try_parse_from(["mdevregd"]).unwrap();
        assert_eq!(cli.poll_interval, std::time::Duration::from_secs(2));
    }
}
