//! `mdevreg`: the command-line client. With `--sysfs-root` the `types`,
//! `list`, `capacity` and `metrics` commands scan sysfs directly ([`mdevreg::report`]); everything else
//! goes to the daemon over D-Bus ([`mdevreg::client`]).
//!
//! Exit codes: 0 ok, 1 runtime error (one line naming the cause), 2 usage.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use mdevreg::cli::{Command, MdevregCli};
use mdevreg::client::{self, ClientError};
use mdevreg::paths::SysfsRoot;
use mdevreg::report;
use mdevreg::wait;

fn main() -> ExitCode {
    let cli = match MdevregCli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with 0, usage errors to stderr with 2.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mdevreg: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(cli: MdevregCli) -> Result<(), ClientError> {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let direct_failed = |failure: report::ReportError| ClientError::Runtime(failure.to_string());
    match cli.command {
        Command::Types {
            parent,
            json,
            sysfs_root: Some(root),
            backend,
        } => report::types_direct(
            &SysfsRoot::new(root),
            parent.as_deref(),
            json,
            backend,
            &mut out,
            &mut err,
        )
        .map_err(direct_failed),
        Command::Capacity {
            json,
            sysfs_root: Some(root),
        } => report::capacity_direct(&SysfsRoot::new(root), json, &mut out, &mut err)
            .map_err(direct_failed),
        Command::List {
            json,
            sysfs_root: Some(root),
        } => report::list_direct(&SysfsRoot::new(root), json, &mut out, &mut err)
            .map_err(direct_failed),
        Command::Wait(args) if args.sysfs_root.is_some() => {
            let condition = client::wait_condition(&args)?;
            let root = SysfsRoot::new(args.sysfs_root.clone().unwrap_or_default());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClientError::Runtime(format!("cannot start the async runtime: {e}")))?
                .block_on(wait::wait_sysfs(&root, &condition, args.timeout, &mut err))
        }
        Command::Metrics {
            openmetrics,
            sysfs_root: Some(root),
        } => report::metrics_direct(&SysfsRoot::new(root), openmetrics, &mut out, &mut err)
            .map_err(direct_failed),
        command => {
            let result = client::run(&cli.bus, command, &mut out);
            let _ = out.flush();
            result
        }
    }
}
