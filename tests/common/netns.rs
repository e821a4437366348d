//! Runs test code inside a fresh network namespace, so netlink traffic (kernel
//! uevent injection, group broadcasts) stays away from the host.

use std::thread;

use super::prereq::missing_prerequisite;

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
