//! The direct (no daemon) mode of the `types`, `list` and `capacity` commands: scan a
//! sysfs root, print warnings, render with [`crate::mdevctl_json`].
//!
//! Output goes to the writers passed in, so tests and the D-Bus client can
//! reuse the same code and capture what is printed.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::capacity;
use crate::cli::BackendFilter;
use crate::mdevctl_json::{kernel_parent, list_document, list_text, types_json_pretty, types_text};
use crate::metrics;
use crate::model::{Backend, Parent, ParentInfo};
use crate::paths::SysfsRoot;
use crate::sysfs::{self, Warning};

/// Why a direct command failed (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The sysfs root is not a readable directory.
    #[error("cannot read sysfs root {}: {source}", path.display())]
    Root { path: PathBuf, source: io::Error },
    /// Writing the output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

/// Scans `root` after checking it is a directory we can list: a missing
/// root is an error, problems inside it are warnings.
pub fn scan_root(root: &SysfsRoot) -> Result<sysfs::Scan, ReportError> {
    check_root(root)?;
    Ok(sysfs::scan(root))
}

/// [`scan_root`] without instances ([`sysfs::scan_types`]): all `types`
/// shows.
pub fn scan_root_types(root: &SysfsRoot) -> Result<sysfs::Scan, ReportError> {
    check_root(root)?;
    Ok(sysfs::scan_types(root))
}

/// `Err` unless `root` is a directory we can list.
fn check_root(root: &SysfsRoot) -> Result<(), ReportError> {
    match std::fs::read_dir(root.path()) {
        Ok(_) => Ok(()),
        Err(source) => Err(ReportError::Root {
            path: root.path().to_path_buf(),
            source,
        }),
    }
}

/// Writes each warning as one `mdevreg: warning: <path>: <message>` line.
pub fn print_warnings(warnings: &[Warning], err: &mut dyn Write) -> io::Result<()> {
    for warning in warnings {
        writeln!(err, "mdevreg: warning: {warning}")?;
    }
    Ok(())
}

/// The parents `types --backend` shows: mdev ones only (mdevctl's
/// output), or all.
pub fn select_backend(parents: Vec<ParentInfo>, backend: BackendFilter) -> Vec<ParentInfo> {
    match backend {
        BackendFilter::All => parents,
        BackendFilter::Mdev => parents
            .into_iter()
            .filter(|p| p.backend == Backend::Mdev)
            .collect(),
    }
}

/// `types [--parent P] [--json]` for already-fetched (and selected) parents.
pub fn write_types(
    parents: &[ParentInfo],
    only_parent: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    if json {
        writeln!(out, "{}", types_json_pretty(parents, only_parent))
    } else {
        out.write_all(types_text(parents, only_parent).as_bytes())
    }
}

/// `list [--json]` for already-fetched parents.
pub fn write_list(parents: &[Parent], json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        let text =
            serde_json::to_string_pretty(&list_document(parents)).map_err(io::Error::other)?;
        writeln!(out, "{text}")
    } else {
        out.write_all(list_text(parents).as_bytes())
    }
}

/// `capacity [--json]` for already-fetched parents.
pub fn write_capacity<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    json: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let devices = capacity::by_physical_device(parents);
    if json {
        let text =
            serde_json::to_string_pretty(&capacity::json(&devices)).map_err(io::Error::other)?;
        writeln!(out, "{text}")
    } else {
        out.write_all(capacity::text(&devices).as_bytes())
    }
}

/// `types --sysfs-root DIR [--parent P] [--json] [--backend B]`.
pub fn types_direct(
    root: &SysfsRoot,
    only_parent: Option<&str>,
    json: bool,
    backend: BackendFilter,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ReportError> {
    let scan = scan_root_types(root)?;
    print_warnings(&scan.warnings, err)?;
    let parents = select_backend(scan.parents, backend);
    write_types(&parents, only_parent, json, out)?;
    Ok(out.flush()?)
}

/// `capacity --sysfs-root DIR [--json]`.
pub fn capacity_direct(
    root: &SysfsRoot,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ReportError> {
    let scan = scan_root(root)?;
    print_warnings(&scan.warnings, err)?;
    write_capacity(&scan.parents, json, out)?;
    Ok(out.flush()?)
}

/// `metrics --sysfs-root DIR [--openmetrics]`: the registry a daemon would
/// hold for this tree, without counters.
pub fn metrics_direct(
    root: &SysfsRoot,
    openmetrics: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ReportError> {
    let scan = scan_root(root)?;
    print_warnings(&scan.warnings, err)?;
    let mut registry = crate::registry::Registry::new();
    // A scan is never refused.
    let _ = registry.apply(crate::registry::Input::KernelScan(scan.parents));
    let format = if openmetrics {
        metrics::Format::OpenMetrics
    } else {
        metrics::Format::Text
    };
    let exposition = metrics::render(std::sync::Arc::new(registry), None, format);
    for chunk in exposition.chunks() {
        out.write_all(chunk)?;
    }
    Ok(out.flush()?)
}

/// `list --sysfs-root DIR [--json]`: every parent is a kernel parent.
pub fn list_direct(
    root: &SysfsRoot,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ReportError> {
    let scan = scan_root(root)?;
    print_warnings(&scan.warnings, err)?;
    let parents: Vec<Parent> = scan.parents.into_iter().map(kernel_parent).collect();
    write_list(&parents, json, out)?;
    Ok(out.flush()?)
}
