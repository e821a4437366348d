//! The one place that decides what a missing test prerequisite means
//! ([`missing_prerequisite`]: a skip with a `SKIP <test>: <why>` line, or a
//! failure when env `CI` is set), the checks built on it (root, tools in
//! PATH), and the common test body runner [`run`] (an async body in a fresh
//! network namespace). Also temporary directories that an unprivileged uid
//! can enter.

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::netns::in_new_netns;

/// Reports a missing prerequisite of `test`: panics when the environment
/// variable `CI` is set (a skip must never pass as a success there),
/// otherwise prints `SKIP <test>: <why>`. Returns `None` so callers can
/// `return` it.
pub fn missing_prerequisite<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisite missing under CI: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// The full path of `tool` in PATH.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Whether `tool` is in PATH.
pub fn have_tool(tool: &str) -> bool {
    find_in_path(tool).is_some()
}

/// Checks that every one of `tools` is in PATH; reports the first missing
/// one (skip, or panic under `CI`) and returns false then.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if !have_tool(tool) {
            return missing_prerequisite::<()>(test, &format!("{tool} not found in PATH"))
                .is_some();
        }
    }
    true
}

/// Checks root and `tools` (looked up in PATH); reports what is missing
/// (skip, or panic under `CI`) and returns false then.
pub fn prerequisites(test: &str, tools: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return missing_prerequisite::<()>(test, "needs root").is_some();
    }
    require_tools(test, tools)
}

/// Runs `body` on a multi-thread tokio runtime (2 workers) inside a new
/// network namespace, after checking root and `tools` (dbus-daemon
/// always), so that injected and forged uevents never reach the host.
/// Child processes spawned by the body share the namespace. Panics in the
/// body fail the test.
pub fn run<F, Fut>(test: &'static str, tools: &[&str], body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let mut needed = vec!["dbus-daemon"];
    needed.extend_from_slice(tools);
    if !prerequisites(test, &needed) {
        return;
    }
    in_new_netns(test, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body())
    });
}

/// A temporary directory that uid 65534 can enter and read (mode 0755).
pub fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}
