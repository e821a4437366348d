//! Acceptance test of `udev-rules/70-mdevreg.rules` and the hook runner
//! `packaging/udev/mdevreg-run-hooks` with a real systemd-udevd.
//!
//! The outer test re-runs this test binary under `unshare -n -m`: in its own
//! network namespace, injected uevents and the synthetic uevent of that
//! namespace's `lo` reach only the udevd started there; in its own mount
//! namespace, tmpfs mounts over /run, /etc/udev/rules.d and /usr/lib/udev leave
//! udevd with the shipped rules file and runner only (plus one test rule that
//! points the hook directory at a temp dir). The inner half injects real
//! kernel uevents, watches udevd's processed events with a libudev monitor and
//! checks what the hooks recorded.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::udevd::{inner_dir, run_inner, Monitor, Processed, Udevd};
use mdevreg::emit::MdevState;
use mdevreg::netlink::UeventEmitter;
use mdevreg::paths::SysfsRoot;
use mdevreg::synth_uevent;
use mdevreg::uevent::Uevent;

const PARENT: &str = "mdevregtest0";
const PARENT_DEVPATH: &str = "/devices/virtual/mdevreg/mdevregtest0";
const OTHER_DEVPATH: &str = "/devices/virtual/mdevreg/mdevregtest1";
const SYNTH_UUID: &str = "0b5c3a8e-43a4-4f3e-9d1e-3c6c8d6f1a27";

#[test]
fn udevd_runs_hooks_once_per_transition() {
    run_inner(
        "udevd_runs_hooks_once_per_transition",
        "inner_udev_scenario",
        &[],
    );
}

/// Sends one `change` uevent into this network namespace by kernel injection
/// (SPEC §1.4) with mdevregd's own emitter: the kernel numbers it and
/// broadcasts it as a kernel event.
fn inject(devpath: &str, env: &[(&str, &str)]) {
    let mut event = Uevent::new("change", devpath);
    for (key, value) in env {
        event = event.with(*key, *value);
    }
    UeventEmitter::open()
        .expect("uevent netlink socket")
        .inject(&event)
        .expect("inject uevent (needs CAP_SYS_ADMIN)");
}

/// Lines the recording hook wrote: `ARG1|ARG2|MDEV_STATE|MDEVREG_PARENT|DEVPATH`.
fn hook_runs(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn runs_for(log: &Path, parent: &str) -> Vec<String> {
    hook_runs(log)
        .into_iter()
        .filter(|line| line.split('|').nth(1) == Some(parent))
        .collect()
}

/// Processed events are broadcast after RUN programs finish; a short grace
/// period still lets a wrongly started second hook run show up.
fn settle() {
    let _ = Command::new("udevadm")
        .args(["settle", "--timeout=10"])
        .status();
    sleep(Duration::from_millis(300));
}

fn assert_parent_event(event: &Processed, state: &str, parent: &str) {
    assert_eq!(event.get("MDEV_STATE"), Some(state), "{event:#?}");
    assert_eq!(event.get("MDEVREG_PARENT"), Some(parent), "{event:#?}");
    let tags = event.get("TAGS").unwrap_or_default();
    assert!(tags.split(':').any(|tag| tag == "mdevreg"), "{event:#?}");
}

/// The half that runs inside `unshare -n -m`; does nothing when run directly.
#[test]
#[ignore = "run by udevd_runs_hooks_once_per_transition inside unshare -n -m"]
fn inner_udev_scenario() {
    let Some(work) = inner_dir() else {
        return;
    };
    let hooks_dir = work.join("hooks.d");
    let hook_log = work.join("hook-runs.log");
    let udevd_log = work.join("udevd.log");

    fs::create_dir_all(&hooks_dir).expect("hooks dir");
    let hook = hooks_dir.join("50-record");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\nprintf '%s|%s|%s|%s|%s\\n' \"$1\" \"$2\" \"$MDEV_STATE\" \"$MDEVREG_PARENT\" \"$DEVPATH\" >> '{}'\n",
            hook_log.display()
        ),
    )
    .expect("write hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod hook");
    // Not executable: must be ignored.
    fs::write(hooks_dir.join("60-not-executable"), "#!/bin/sh\nexit 1\n").expect("write");

    // Test-only: the hooks live in our temp dir instead of /etc/mdevreg/hooks.d.
    let _udevd = Udevd::start(
        &work,
        Some(&format!(
            "ENV{{MDEVREG_HOOKS_DIR}}=\"{}\"\n",
            hooks_dir.display()
        )),
    );
    let mut monitor = Monitor::new();
    let long = Duration::from_secs(20);

    // 1. One injected registration: one hook run with state, parent and env.
    let registered = [
        ("SUBSYSTEM", "mdevreg"),
        ("MDEV_STATE", "registered"),
        ("MDEV_PARENT", PARENT),
    ];
    inject(PARENT_DEVPATH, &registered);
    let events = monitor.wait_for(PARENT_DEVPATH, 1, long);
    assert_parent_event(&events[0], "registered", PARENT);
    assert_eq!(events[0].get("MDEVREG_BACKEND"), Some("mdev"));
    settle();
    assert_eq!(
        runs_for(&hook_log, PARENT),
        vec![format!(
            "registered|{PARENT}|registered|{PARENT}|{PARENT_DEVPATH}"
        )]
    );

    // 2. The same transition twice in quick succession: both are processed
    // (two kernel SEQNUMs), the hooks still ran once in all.
    inject(PARENT_DEVPATH, &registered);
    inject(PARENT_DEVPATH, &registered);
    let events = monitor.wait_for(PARENT_DEVPATH, 2, long);
    assert_ne!(events[0].seqnum, events[1].seqnum);
    for event in &events {
        assert_parent_event(event, "registered", PARENT);
    }
    settle();
    assert_eq!(
        runs_for(&hook_log, PARENT).len(),
        1,
        "{:?}",
        hook_runs(&hook_log)
    );
    let log_text = fs::read_to_string(&udevd_log).unwrap_or_default();
    assert!(
        log_text.contains(&format!(
            "mdevreg-hooks: parent {PARENT} registered: duplicate"
        )),
        "the skipped duplicate is logged"
    );

    // 3. A real transition right after is not swallowed, and neither is the
    // way back.
    let unregistered = [
        ("SUBSYSTEM", "mdevreg"),
        ("MDEV_STATE", "unregistered"),
        ("MDEV_PARENT", PARENT),
    ];
    inject(PARENT_DEVPATH, &unregistered);
    monitor.wait_for(PARENT_DEVPATH, 1, long);
    inject(PARENT_DEVPATH, &registered);
    monitor.wait_for(PARENT_DEVPATH, 1, long);
    settle();
    let runs = runs_for(&hook_log, PARENT);
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs[1].starts_with(&format!("unregistered|{PARENT}|unregistered|")));
    assert!(runs[2].starts_with(&format!("registered|{PARENT}|registered|")));

    // 4. After the window (2 s) the same state runs the hooks again: the
    // suppression is for near-simultaneous copies only.
    sleep(Duration::from_millis(2300));
    inject(PARENT_DEVPATH, &registered);
    monitor.wait_for(PARENT_DEVPATH, 1, long);
    settle();
    assert_eq!(runs_for(&hook_log, PARENT).len(), 4);

    // 5. A change without MDEV_STATE is no parent event: no tag, no hook.
    inject(OTHER_DEVPATH, &[("SUBSYSTEM", "mdevreg"), ("FOO", "bar")]);
    let events = monitor.wait_for(OTHER_DEVPATH, 1, long);
    assert_eq!(events[0].get("MDEVREG_PARENT"), None, "{:#?}", events[0]);
    assert!(!events[0]
        .get("TAGS")
        .unwrap_or_default()
        .contains("mdevreg"));
    settle();
    assert!(runs_for(&hook_log, "mdevregtest1").is_empty());

    // 6. The synthetic form on a real device: this namespace's `lo`.
    let lo_devpath = "/devices/virtual/net/lo";
    fs::write(
        format!("/sys{lo_devpath}/uevent"),
        format!("change {SYNTH_UUID} MDEVSTATE=registered\n"),
    )
    .expect("write synthetic uevent");
    let events = monitor.wait_for(lo_devpath, 1, long);
    assert_eq!(events[0].get("SYNTH_UUID"), Some(SYNTH_UUID));
    assert_eq!(events[0].get("SYNTH_ARG_MDEVSTATE"), Some("registered"));
    assert_parent_event(&events[0], "registered", "lo");
    settle();
    assert_eq!(
        runs_for(&hook_log, "lo"),
        vec![format!("registered|lo|registered|lo|{lo_devpath}")]
    );
    // 7. A userspace parent with its own DevPath: the name comes from
    // MDEV_PARENT, not from the last DEVPATH component.
    let custom_devpath = "/devices/virtual/custom/node7";
    inject(
        custom_devpath,
        &[
            ("SUBSYSTEM", "mdevreg"),
            ("MDEV_STATE", "registered"),
            ("MDEV_PARENT", "custom-parent"),
        ],
    );
    let events = monitor.wait_for(custom_devpath, 1, long);
    assert_parent_event(&events[0], "registered", "custom-parent");
    settle();
    assert_eq!(
        runs_for(&hook_log, "custom-parent"),
        vec![format!(
            "registered|custom-parent|registered|custom-parent|{custom_devpath}"
        )]
    );
    assert!(runs_for(&hook_log, "node7").is_empty());

    // 8. mdevregd's vendor-VFIO writer (the one that announces NVIDIA VFs)
    // pointed at `lo`: udevd runs the rules with MDEV_STATE and
    // MDEVREG_BACKEND, and the event keeps the device's own kernel
    // properties.
    let uuid =
        synth_uevent::write_change(&SysfsRoot::new("/sys"), lo_devpath, MdevState::Registered)
            .expect("write the synthetic change");
    let events = monitor.wait_for(lo_devpath, 1, long);
    let event = &events[0];
    assert_eq!(
        event.get("SYNTH_UUID"),
        Some(uuid.hyphenated().to_string().as_str())
    );
    assert_parent_event(event, "registered", "lo");
    assert_eq!(
        event.get("MDEVREG_BACKEND"),
        Some("nvidia-vfio"),
        "{event:#?}"
    );
    assert_eq!(event.get("SUBSYSTEM"), Some("net"), "{event:#?}");
    assert_eq!(event.get("INTERFACE"), Some("lo"), "{event:#?}");
    assert_eq!(event.get("IFINDEX"), Some("1"), "{event:#?}");
    settle();

    // The non-executable file was never run (it would not have logged, but
    // it must not be counted as a hook either).
    let log_text = fs::read_to_string(&udevd_log).unwrap_or_default();
    assert!(log_text.contains("mdevreg-hooks: parent lo registered: ran 1 hook(s)"));
}
