//! mdevreg-uevent-writer: writes the synthetic `change` uevents of NVIDIA
//! vendor-specific VFIO virtual functions for mdevregd (whose `/sys` is
//! read-only). A thin entry point over [`mdevreg::uevent_writer`].

use std::process::ExitCode;

use clap::Parser;
use mdevreg::cli::UeventWriterCli;
use mdevreg::logging;
use mdevreg::paths::SysfsRoot;
use mdevreg::uevent_writer::server;

fn main() -> ExitCode {
    let cli = UeventWriterCli::parse();
    logging::init(cli.verbose);
    let root = match SysfsRoot::new(&cli.sysfs_root).canonicalize() {
        Ok(root) => root,
        Err(err) => {
            log::error!("sysfs root {}: {err}", cli.sysfs_root.display());
            return ExitCode::FAILURE;
        }
    };
    let listener = match server::listener(cli.listen.as_deref()) {
        Ok(listener) => listener,
        Err(err) => {
            log::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("writing synthetic uevents below {}", root.path().display());
    if let Err(err) = server::serve(&listener, &root) {
        log::error!("accept: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
