//! A real systemd-udevd with the shipped rules, for tests that observe what
//! udevd makes of mdevreg's uevents. The outer test re-runs its own binary
//! under `unshare -n -m` ([`run_inner`]); the inner half ([`inner_dir`],
//! then [`Udevd::start`]) mounts tmpfs over /run and the udev rule and
//! program directories, so udevd sees nothing but `udev-rules/70-mdevreg.rules`,
//! `packaging/udev/mdevreg-run-hooks` and the caller's extra rules, and
//! watches udevd's processed events with a libudev [`Monitor`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::prereq::{missing_prerequisite, require_tools};

/// Env var naming the temp dir of the scenario; set only for the inner run.
const INNER_DIR_ENV: &str = "MDEVREG_UDEV_TEST_DIR";
/// Env var holding the outer process's namespace ids, so the inner half can
/// refuse to run in the host's namespaces.
const OUTER_NS_ENV: &str = "MDEVREG_UDEV_TEST_OUTER_NS";
/// udevd's log, in the scenario's temp dir.
const LOG_NAME: &str = "udevd.log";

pub fn find_udevd() -> Option<PathBuf> {
    [
        "/usr/lib/systemd/systemd-udevd",
        "/lib/systemd/systemd-udevd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
}

fn namespace_ids() -> String {
    let net = fs::read_link("/proc/self/ns/net").unwrap_or_default();
    let mnt = fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
    format!("{} {}", net.display(), mnt.display())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The outer half of `test`: checks root, udevd and `tools`, then runs the
/// ignored test `inner` of this binary under `unshare -n -m` and fails with
/// its output and udevd's log unless it passed.
pub fn run_inner(test: &str, inner: &str, tools: &[&str]) {
    if !nix::unistd::geteuid().is_root() {
        missing_prerequisite::<()>(test, "needs root (unshare, mounts, uevent injection)");
        return;
    }
    if find_udevd().is_none() {
        missing_prerequisite::<()>(test, "systemd-udevd not found (Debian package udev)");
        return;
    }
    let mut needed = vec!["unshare", "mount", "flock", "logger", "od"];
    needed.extend_from_slice(tools);
    if !require_tools(test, &needed) {
        return;
    }

    let work = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args([
            "--exact",
            inner,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_DIR_ENV, work.path())
        .env(OUTER_NS_ENV, namespace_ids())
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let udevd_log = fs::read_to_string(work.path().join(LOG_NAME)).unwrap_or_default();
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "inner scenario failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- udevd log (tail)\n{}",
        output.status,
        tail(&udevd_log, 80)
    );
}

/// The scenario's temp dir when running as the inner half inside the
/// namespaces [`run_inner`] made; `None` (after a note) when run directly.
/// Panics when the namespaces are the outer ones: mounting over /run and
/// injecting uevents is only safe in namespaces made for us.
pub fn inner_dir() -> Option<PathBuf> {
    let Some(work) = std::env::var_os(INNER_DIR_ENV).map(PathBuf::from) else {
        eprintln!("not inside the test namespaces; nothing to do");
        return None;
    };
    let outer = std::env::var(OUTER_NS_ENV).unwrap_or_default();
    let ours = namespace_ids();
    let (outer_net, outer_mnt) = outer.split_once(' ').expect("outer namespace ids");
    let (our_net, our_mnt) = ours.split_once(' ').expect("own namespace ids");
    assert!(
        outer_net != our_net && outer_mnt != our_mnt,
        "refusing to run in the outer namespaces ({outer} vs {ours})"
    );
    Some(work)
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// A running systemd-udevd; killed and reaped when dropped.
pub struct Udevd {
    child: Child,
    log: PathBuf,
}

impl Udevd {
    /// Inside the inner namespaces: mounts this network namespace's sysfs
    /// and empty tmpfs over /run and the udev rule and program directories,
    /// installs the shipped rules and hook runner plus `extra_rules` (as
    /// `/run/udev/rules.d/00-mdevreg-test.rules`, when given), starts udevd
    /// with `--debug` logging to `work/udevd.log` and waits for its control
    /// socket. udevd runs in the network namespace of the calling thread.
    pub fn start(work: &Path, extra_rules: Option<&str>) -> Udevd {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = manifest.join("udev-rules/70-mdevreg.rules");
        let runner = manifest.join("packaging/udev/mdevreg-run-hooks");

        run("mount", &["-t", "sysfs", "sysfs", "/sys"]);
        run("mount", &["-t", "tmpfs", "tmpfs", "/run"]);
        run("mount", &["-t", "tmpfs", "tmpfs", "/usr/lib/udev"]);
        for dir in ["/etc/udev/rules.d", "/usr/local/lib/udev/rules.d"] {
            if Path::new(dir).is_dir() {
                run("mount", &["-t", "tmpfs", "tmpfs", dir]);
            }
        }
        fs::create_dir_all("/run/udev/rules.d").expect("rules dir");
        fs::copy(&rules, "/run/udev/rules.d/70-mdevreg.rules").expect("install rules");
        fs::copy(&runner, "/usr/lib/udev/mdevreg-run-hooks").expect("install runner");
        fs::set_permissions(
            "/usr/lib/udev/mdevreg-run-hooks",
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod runner");
        if let Some(extra) = extra_rules {
            fs::write("/run/udev/rules.d/00-mdevreg-test.rules", extra).expect("test rule");
        }

        let log = work.join(LOG_NAME);
        let log_file = fs::File::create(&log).expect("udevd log");
        let child = Command::new(find_udevd().expect("udevd"))
            .arg("--debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("start systemd-udevd");
        let udevd = Udevd { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new("/run/udev/control").exists() {
            assert!(
                Instant::now() < deadline,
                "udevd did not create /run/udev/control"
            );
            sleep(Duration::from_millis(50));
        }
        udevd
    }

    /// What udevd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Udevd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One processed event as udevd broadcast it to libudev monitors.
#[derive(Debug)]
pub struct Processed {
    pub devpath: String,
    pub seqnum: u64,
    pub properties: Vec<(String, String)>,
}

impl Processed {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A libudev monitor on udevd's processed events (the `udev` netlink
/// group); events not asked for yet are kept for the next call. Open it
/// after [`Udevd::start`] (libudev disables the monitor without
/// /run/udev/control).
pub struct Monitor {
    socket: udev::MonitorSocket,
    pending: Vec<Processed>,
}

impl Monitor {
    pub fn new() -> Self {
        let socket = udev::MonitorBuilder::new()
            .expect("libudev monitor")
            .listen()
            .expect("listen on the udev monitor group");
        Monitor {
            socket,
            pending: Vec::new(),
        }
    }

    fn receive(&mut self) {
        for event in self.socket.iter() {
            let device = event.device();
            let properties = device
                .properties()
                .map(|entry| {
                    (
                        entry.name().to_string_lossy().into_owned(),
                        entry.value().to_string_lossy().into_owned(),
                    )
                })
                .collect();
            self.pending.push(Processed {
                devpath: device.devpath().to_string_lossy().into_owned(),
                seqnum: event.sequence_number(),
                properties,
            });
        }
    }

    /// Returns the next `count` processed events for `devpath`.
    pub fn wait_for(&mut self, devpath: &str, count: usize, timeout: Duration) -> Vec<Processed> {
        let deadline = Instant::now() + timeout;
        loop {
            self.receive();
            let matching = self.pending.iter().filter(|e| e.devpath == devpath).count();
            if matching >= count {
                let mut taken = Vec::new();
                let mut kept = Vec::new();
                for event in self.pending.drain(..) {
                    if event.devpath == devpath && taken.len() < count {
                        taken.push(event);
                    } else {
                        kept.push(event);
                    }
                }
                self.pending = kept;
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} processed event(s) on {devpath}; have {:#?}",
                self.pending
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Returns the processed events for `devpath` up to and including the
    /// first one `last` accepts. udevd processes the events of one devpath
    /// one at a time in kernel order, so a marker event sent after others
    /// on the same devpath comes after all of them.
    pub fn until(
        &mut self,
        devpath: &str,
        last: impl Fn(&Processed) -> bool,
        timeout: Duration,
    ) -> Vec<Processed> {
        let mut taken = Vec::new();
        loop {
            let event = self.wait_for(devpath, 1, timeout).remove(0);
            let done = last(&event);
            taken.push(event);
            if done {
                return taken;
            }
        }
    }
}
