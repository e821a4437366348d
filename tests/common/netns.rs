//! Runs test code inside a fresh network namespace, so netlink traffic (kernel
//! uevent injection, group broadcasts) stays away from the host, and reports
//! missing prerequisites (skip, or fail when `CI` is set).

use std::thread;

/// Reports a missing prerequisite: panics when the environment variable `CI`
/// is set, otherwise prints why `test` is skipped. Returns `None` so callers
/// can `return` it.
pub fn missing_prerequisite<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisite missing under CI: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// Runs `body` on a new thread that has first moved into a new, empty network
/// namespace (`unshare(CLONE_NEWNET)` affects only the calling thread); every
/// socket and child process it creates lives there. Panics in `body`
/// propagate. Returns `None` when the namespace cannot be made (not root).
pub fn in_new_netns<R, F>(test: &str, body: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let worker = thread::spawn(move || {
        // SAFETY: unshare takes only a flag word and changes the namespace of
        // this thread alone; no memory is shared with the kernel.
        let rc = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(body())
    });
    match worker.join() {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            missing_prerequisite(test, &format!("unshare(CLONE_NEWNET) failed: {error}"))
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A current-thread tokio runtime with I/O and timers, for use inside
/// [`in_new_netns`].
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
