//! `mdevregd` on NVIDIA vendor-specific VFIO hosts (fake sysfs trees, a
//! real dbus-daemon, real kernel uevents injected in a fresh network
//! namespace): the parents and their Backend/PhysicalDevice over D-Bus,
//! GetCapacity, placing a vGPU seen by the poll as PropertiesChanged,
//! VFs appearing and leaving with uevents (registrations, unregistrations,
//! the synthetic `change` written to each VF's `uevent` file).
//!
//! Needs root (namespaces, injection); skipped without it, or failed when
//! `CI` is set.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::eventually;
use common::registry_signals::{next_signal, registry_signals};
use common::sysfs_fixture::{l40s_a, l40s_b, populate_nvidia_vfio, FakeSysfs};
use futures_util::StreamExt;
use mdevreg::dbus::{MdevType1Proxy, Parent1Proxy};
use mdevreg::netlink::UeventEmitter;
use mdevreg::uevent::Uevent;
use zbus::proxy::CacheProperties;

const LONG: Duration = Duration::from_secs(20);

async fn parent1<'c>(setup: &'c Setup, name: &str) -> Parent1Proxy<'c> {
    Parent1Proxy::builder(&setup.client)
        .path(mdevreg::label::parent_path(name))
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("Parent1 proxy")
}

async fn type1<'c>(setup: &'c Setup, parent: &str, id: &str) -> MdevType1Proxy<'c> {
    MdevType1Proxy::builder(&setup.client)
        .path(mdevreg::label::type_path(parent, id))
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("MdevType1 proxy")
}

/// Has the kernel number and broadcast a `pci` uevent in this namespace.
fn inject_pci(action: &str, devpath: &str) {
    let event = Uevent::new(action, devpath)
        .with("SUBSYSTEM", "pci")
        .with("DRIVER", "nvidia");
    UeventEmitter::open()
        .expect("uevent emitter")
        .inject(&event)
        .expect("inject (needs CAP_SYS_ADMIN)");
}

#[test]
fn vendor_parents_over_dbus_and_the_poll_sees_placements() {
    run(
        "vendor_parents_over_dbus_and_the_poll_sees_placements",
        &[],
        || async {
            let tree = FakeSysfs::new();
            populate_nvidia_vfio(&tree);
            const INTERVAL: f64 = 1.5;
            let setup = Setup::start(tree.root(), |options| {
                options.emit = "none";
                options
                    .extra_args
                    .extend(["--poll-interval".to_string(), INTERVAL.to_string()]);
            })
            .await;

            let vf = parent1(&setup, "0000:41:00.5").await;
            assert_eq!(vf.backend().await.expect("Backend"), "nvidia-vfio");
            assert_eq!(
                vf.physical_device().await.expect("PhysicalDevice"),
                "0000:41:00.0"
            );
            assert_eq!(vf.driver().await.expect("Driver"), "nvidia");

            let registry = setup.registry().await;
            let capacity = registry
                .get_capacity("0000:41:00.0")
                .await
                .expect("GetCapacity");
            assert_eq!(
                capacity,
                [
                    (
                        "nvidia-1146".to_string(),
                        "NVIDIA L40S-2B".to_string(),
                        3,
                        1
                    ),
                    (
                        "nvidia-1148".to_string(),
                        "NVIDIA L40S-2Q".to_string(),
                        3,
                        0
                    ),
                ]
            );
            let all = registry.get_capacity("").await.expect("GetCapacity all");
            assert_eq!(all.len(), 13, "{all:?}");
            // An unknown or malformed physical device is an error, not an
            // empty answer.
            match registry.get_capacity("0000:99:00.0").await {
                Err(mdevreg::dbus::Error::NotRegistered(message)) => {
                    assert!(message.contains("\"0000:99:00.0\""), "{message}")
                }
                other => panic!("unknown device: {other:?}"),
            }
            for bad in ["gpu0", "0000:41:00.0 ", "0000:C1:00.0"] {
                match registry.get_capacity(bad).await {
                    Err(mdevreg::dbus::Error::InvalidArgument(message)) => {
                        assert!(message.contains("not a PCI address"), "{message}")
                    }
                    other => panic!("malformed device {bad:?}: {other:?}"),
                }
            }
            // The daemon is still there and answers.
            assert_eq!(
                registry
                    .get_capacity("0000:c1:00.0")
                    .await
                    .expect("B")
                    .len(),
                13
            );

            // Place an L40S-24Q on GPU B's first VF, as writing
            // current_vgpu_type does: no uevent; the siblings' lists shrink
            // to the 24 GB type.
            let b = l40s_b();
            let held = type1(&setup, "0000:c1:00.4", "nvidia-1155").await;
            assert_eq!(held.available_instances().await.expect("avail"), 1);
            let mut changed_stream = zbus::MessageStream::for_match_rule(
                zbus::MatchRule::builder()
                    .msg_type(zbus::message::Type::Signal)
                    .interface("org.freedesktop.DBus.Properties")
                    .member("PropertiesChanged")
                    .path(mdevreg::label::type_path("0000:c1:00.4", "nvidia-1155"))
                    .build()
                    .expect("match rule"),
                &setup.client,
                None,
            )
            .await
            .expect("subscribe to PropertiesChanged");
            let placed = Instant::now();
            tree.set_vgpu(&b, "0000:c1:00.4", 1155);
            let deadline = Duration::from_secs_f64(2.0 * INTERVAL);
            let available = loop {
                let message = tokio::time::timeout(LONG, changed_stream.next())
                    .await
                    .expect("PropertiesChanged in time")
                    .expect("stream")
                    .expect("message");
                let (interface, changed, _invalidated): (
                    String,
                    std::collections::HashMap<String, zbus::OwnedVariant>,
                    Vec<String>,
                ) = message
                    .body()
                    .deserialize()
                    .expect("PropertiesChanged body");
                assert_eq!(interface, "org.mdevreg.MdevType1");
                if let Some(value) = changed.get("AvailableInstances") {
                    break u32::try_from(value.clone()).expect("u32");
                }
            };
            let took = placed.elapsed();
            assert_eq!(available, 0);
            assert!(
                took <= deadline,
                "PropertiesChanged after {took:?}, more than two poll intervals ({deadline:?})"
            );
            assert_eq!(
                held.devices().await.expect("Devices"),
                ["0000:c1:00.4"],
                "the VF holds the vGPU"
            );
            // A sibling now lists the 24 GB type only.
            let sibling = parent1(&setup, "0000:c1:00.6").await;
            eventually("the sibling's list to shrink", || async {
                (sibling.types().await.ok()?.len() == 1).then_some(())
            })
            .await;
            let capacity = registry
                .get_capacity("0000:c1:00.0")
                .await
                .expect("GetCapacity");
            assert_eq!(
                capacity,
                [(
                    "nvidia-1155".to_string(),
                    "NVIDIA L40S-24Q".to_string(),
                    3,
                    1
                )]
            );
            let stats = registry.stats().await.expect("Stats");
            assert!(stats["vendor_polls"] >= 1, "{stats:?}");

            // `mdevreg show` and `capacity` through the daemon.
            let show = std::process::Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                .args(["--bus", setup.bus.address(), "show", "0000:c1:00.4"])
                .output()
                .expect("run mdevreg show");
            let text = String::from_utf8_lossy(&show.stdout);
            assert!(
                show.status.success(),
                "{}",
                String::from_utf8_lossy(&show.stderr)
            );
            assert!(
                text.contains("  Backend:   nvidia-vfio\n  Physical:  0000:c1:00.0\n")
                    && text.contains(
                        "    nvidia-1155 (vfio-pci, 0 available) NVIDIA L40S-24Q\n      0000:c1:00.4\n"
                    ),
                "{text}"
            );
            let capacity = std::process::Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                .args(["--bus", setup.bus.address(), "capacity"])
                .output()
                .expect("run mdevreg capacity");
            assert!(String::from_utf8_lossy(&capacity.stdout).contains(
                "0000:c1:00.0 (4 parents)\n  TYPE         CREATABLE  HOLDING  NAME\n  nvidia-1155          3        1  NVIDIA L40S-24Q\n"
            ));
        },
    );
}

#[test]
fn vfs_coming_and_going_with_uevents_register_and_write_synthetic_changes() {
    run(
        "vfs_coming_and_going_with_uevents_register_and_write_synthetic_changes",
        &[],
        || async {
            let tree = FakeSysfs::new();
            let a = l40s_a();
            tree.add_vfio_gpu(&a);
            // A long interval: only uevents can drive what follows.
            let setup = Setup::start(tree.root(), |options| {
                options.emit = "none";
                options
                    .extra_args
                    .extend(["--poll-interval".to_string(), "600".to_string()]);
            })
            .await;
            let mut signals = registry_signals(&setup.client).await;

            // SR-IOV enabled on GPU B: add + bind per VF.
            let b = l40s_b();
            tree.add_vfio_gpu(&b);
            for vf in b.vf_names() {
                inject_pci("add", &b.vf_devpath(&vf));
                inject_pci("bind", &b.vf_devpath(&vf));
            }
            expect_kernel_registrations(&mut signals, b.vf_names()).await;
            // Each new VF got its synthetic change, in its own uevent file.
            for vf in b.vf_names() {
                let path = tree.path(format!("{}/uevent", b.vf_devpath(&vf)));
                let text = fs::read_to_string(&path).expect("uevent file");
                let words: Vec<&str> = text.trim_end().split(' ').collect();
                assert_eq!(words.len(), 4, "{text:?}");
                assert_eq!(words[0], "change");
                assert!(uuid::Uuid::try_parse(words[1]).is_ok(), "{text:?}");
                assert_eq!(
                    &words[2..],
                    ["MDEVSTATE=registered", "MDEVREGBACKEND=nvidiavfio"]
                );
            }

            // One VF of GPU A is unbound from nvidia (its nvidia/ goes, the
            // device stays): unregistered, with the synthetic change.
            let unbound = a.vf_names()[2].clone();
            fs::remove_dir_all(tree.path(format!("{}/nvidia", a.vf_devpath(&unbound))))
                .expect("remove nvidia/");
            inject_pci("unbind", &a.vf_devpath(&unbound));
            let signal = next_signal(&mut signals, LONG)
                .await
                .expect("ParentUnregistered");
            assert_eq!(
                (signal.member.as_str(), signal.name.as_str()),
                ("ParentUnregistered", unbound.as_str())
            );
            let text = fs::read_to_string(tree.path(format!("{}/uevent", a.vf_devpath(&unbound))))
                .expect("uevent file");
            assert!(
                text.ends_with(" MDEVSTATE=unregistered MDEVREGBACKEND=nvidiavfio\n"),
                "{text:?}"
            );

            // SR-IOV disabled on GPU B: every VF goes (unbind + remove).
            tree.remove_vfio_vfs(&b);
            for vf in b.vf_names() {
                inject_pci("unbind", &b.vf_devpath(&vf));
                inject_pci("remove", &b.vf_devpath(&vf));
            }
            let mut unregistered = Vec::new();
            while unregistered.len() < 4 {
                let signal = next_signal(&mut signals, LONG)
                    .await
                    .expect("ParentUnregistered for each VF");
                assert_eq!(signal.member, "ParentUnregistered", "{signal:?}");
                unregistered.push(signal.name);
            }
            unregistered.sort();
            assert_eq!(unregistered, b.vf_names());
            let registry = setup.registry().await;
            let stats = registry.stats().await.expect("Stats");
            assert_eq!(stats["vendor_polls"], 0, "no poll ran: {stats:?}");
            assert_eq!(stats["uevents_synthetic"], 5, "{stats:?}");
            assert!(setup.daemon.log().contains("the device is gone"));
        },
    );
}

/// A read-only bind mount of a directory (the fake tree as a sandboxed
/// daemon sees /sys under `ProtectKernelTunables=yes`); detached on drop.
struct ReadOnlyView {
    dir: tempfile::TempDir,
}

impl ReadOnlyView {
    fn of(source: &std::path::Path) -> ReadOnlyView {
        let dir = tempfile::tempdir().expect("view dir");
        let mount = |args: &[&str]| {
            let status = std::process::Command::new("mount")
                .args(args)
                .status()
                .expect("run mount");
            assert!(status.success(), "mount {args:?}: {status}");
        };
        let target = dir.path().to_str().expect("utf-8 path").to_owned();
        mount(&["--bind", source.to_str().expect("utf-8 path"), &target]);
        let view = ReadOnlyView { dir };
        mount(&["-o", "remount,bind,ro", &target]);
        view
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_read_only_sys_counts_the_failed_synthetic_uevent_and_goes_on() {
    run(
        "a_read_only_sys_counts_the_failed_synthetic_uevent_and_goes_on",
        &["mount", "umount"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_vfio_gpu(&l40s_a());
            let view = ReadOnlyView::of(tree.root());
            // The daemon reads the tree through the read-only view; the
            // test changes it through the writable original.
            let setup = Setup::start(view.path(), |options| {
                options.emit = "none";
                options
                    .extra_args
                    .extend(["--poll-interval".to_string(), "600".to_string()]);
            })
            .await;
            let mut signals = registry_signals(&setup.client).await;
            let registry = setup.registry().await;
            let before = registry.stats().await.expect("Stats");

            // SR-IOV enabled on GPU B, picked up by a rescan.
            let b = l40s_b();
            tree.add_vfio_gpu(&b);
            let uevent_before: Vec<String> = b
                .vf_names()
                .iter()
                .map(|vf| {
                    fs::read_to_string(tree.path(format!("{}/uevent", b.vf_devpath(vf))))
                        .expect("uevent file")
                })
                .collect();
            registry.rescan().await.expect("Rescan");
            expect_kernel_registrations(&mut signals, b.vf_names()).await;

            // Each write failed with EROFS: counted, logged with the hint,
            // nothing written, and the daemon serves on.
            let stats = registry.stats().await.expect("Stats");
            assert_eq!(
                stats["uevent_emit_failures"] - before["uevent_emit_failures"],
                4,
                "{stats:?}"
            );
            assert_eq!(
                stats["uevents_synthetic"], before["uevents_synthetic"],
                "{stats:?}"
            );
            let log = setup.daemon.log();
            assert!(
                log.contains("Read-only file system") && log.contains("--uevent-writer"),
                "{log}"
            );
            for (vf, text) in b.vf_names().iter().zip(&uevent_before) {
                let now = fs::read_to_string(tree.path(format!("{}/uevent", b.vf_devpath(vf))))
                    .expect("uevent file");
                assert_eq!(&now, text, "{vf}: nothing written");
            }
            let capacity = registry
                .get_capacity("0000:c1:00.0")
                .await
                .expect("GetCapacity after the failures");
            assert_eq!(capacity.len(), 13, "{capacity:?}");
            drop(setup);
        },
    );
}

/// `mdevreg-uevent-writer` on the writable fixture tree, listening on a
/// socket of its own; killed on drop. Its stderr (the log) is collected.
struct UeventWriter {
    child: std::process::Child,
    socket: std::path::PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl UeventWriter {
    /// Starts the writer and returns once it listens (its first log line).
    fn start(root: &std::path::Path) -> UeventWriter {
        use std::io::BufRead;
        let dir = common::prereq::open_tempdir("mdevreg-writer");
        let socket = dir.path().join("writer.sock");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mdevreg-uevent-writer"))
            .arg("--sysfs-root")
            .arg(root)
            .arg("--listen")
            .arg(&socket)
            .env_remove("JOURNAL_STREAM")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mdevreg-uevent-writer");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(first.contains("writing synthetic uevents"), "{first}");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = collected.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        UeventWriter {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    /// Sends `request` as it is through socat, as root or as nobody;
    /// returns the answer.
    fn ask(&self, request: &str, as_nobody: bool) -> String {
        let mut child = common::command_as("socat", as_nobody)
            .args(["-t", "30", "-"])
            .arg(format!("UNIX-CONNECT:{}", self.socket.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run socat");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(request.as_bytes())
            .expect("send the request");
        let output = child.wait_with_output().expect("socat output");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for UeventWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_uevent_writer_writes_for_a_daemon_on_a_read_only_sys() {
    run(
        "the_uevent_writer_writes_for_a_daemon_on_a_read_only_sys",
        &["mount", "umount", "socat", "setpriv"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_vfio_gpu(&l40s_a());
            let mut writer = UeventWriter::start(tree.root());
            // The daemon reads the tree through a read-only view (as /sys
            // under ProtectKernelTunables=yes); only the writer may write.
            let view = ReadOnlyView::of(tree.root());
            let socket = writer.socket.to_str().expect("utf-8 path").to_owned();
            let setup = Setup::start(view.path(), |options| {
                options.emit = "none";
                options.extra_args.extend([
                    "--poll-interval".to_string(),
                    "600".to_string(),
                    "--uevent-writer".to_string(),
                    socket,
                ]);
            })
            .await;
            let mut signals = registry_signals(&setup.client).await;
            let registry = setup.registry().await;
            let before = registry.stats().await.expect("Stats");

            // SR-IOV enabled on GPU B, picked up by a rescan.
            let b = l40s_b();
            tree.add_vfio_gpu(&b);
            let uevent = |devpath: &str| {
                fs::read_to_string(tree.path(format!("{devpath}/uevent"))).expect("uevent file")
            };
            let pf_before = uevent(&b.pf_devpath);
            registry.rescan().await.expect("Rescan");
            expect_kernel_registrations(&mut signals, b.vf_names()).await;

            // The synthetic change of each VF went through the writer
            // before its signal.
            let stats = registry.stats().await.expect("Stats");
            assert_eq!(
                stats["uevents_synthetic"] - before["uevents_synthetic"],
                4,
                "{stats:?}"
            );
            assert_eq!(
                stats["uevent_emit_failures"], before["uevent_emit_failures"],
                "{stats:?}"
            );
            for vf in b.vf_names() {
                let line = uevent(&b.vf_devpath(&vf));
                let uuid = line
                    .strip_prefix("change ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|uuid| uuid.parse::<uuid::Uuid>().ok())
                    .unwrap_or_else(|| panic!("{vf}: {line:?}"));
                assert_eq!(
                    line,
                    mdevreg::synth_uevent::change_line(mdevreg::emit::MdevState::Registered, &uuid),
                    "{vf}"
                );
                assert!(
                    writer
                        .log
                        .lock()
                        .expect("log")
                        .contains(&format!("SYNTH_UUID={uuid}")),
                    "{vf}: not written by the writer"
                );
            }
            assert_eq!(uevent(&b.pf_devpath), pf_before, "the PF is not touched");
            assert!(
                !setup.daemon.log().contains("Read-only"),
                "{}",
                setup.daemon.log()
            );

            // Refused: a non-root peer (even with the socket open to it),
            // the PF (not a VF), a path out of the tree, garbage.
            let vf = b.vf_devpath(&b.vf_names()[0]);
            let vf_before = uevent(&vf);
            fs::set_permissions(
                &writer.socket,
                std::os::unix::fs::PermissionsExt::from_mode(0o666),
            )
            .expect("chmod socket");
            let answer = writer.ask(&format!("unregistered {vf}\n"), true);
            assert!(
                answer.starts_with("error 1 refused: peer uid 65534 is not root"),
                "{answer:?}"
            );
            let answer = writer.ask(&format!("unregistered {}\n", b.pf_devpath), false);
            assert!(
                answer.starts_with("error 1 ")
                    && answer.contains("not an NVIDIA vendor-specific VFIO virtual function"),
                "{answer:?}"
            );
            let answer = writer.ask(&format!("registered {vf}/../../../..\n"), false);
            assert!(answer.starts_with("error 22 not a canonical"), "{answer:?}");
            let answer = writer.ask("\u{1}\u{2}garbage", false);
            assert!(answer.starts_with("error 22 "), "{answer:?}");
            assert_eq!(uevent(&vf), vf_before, "refused requests write nothing");
            assert_eq!(uevent(&b.pf_devpath), pf_before);
            // And a good request by hand still works: the writer served on.
            let answer = writer.ask(&format!("unregistered {vf}\n"), false);
            assert!(answer.starts_with("ok "), "{answer:?}");
            assert!(uevent(&vf).contains("MDEVSTATE=unregistered"));
            assert!(writer.child.try_wait().expect("writer status").is_none());
            drop(setup);
        },
    );
}

/// Waits for one ParentRegistered signal of a kernel parent for each of
/// `names`, in any order; any other signal first fails the test.
async fn expect_kernel_registrations(signals: &mut zbus::MessageStream, mut names: Vec<String>) {
    let mut registered = Vec::new();
    while registered.len() < names.len() {
        let signal = next_signal(signals, LONG)
            .await
            .expect("ParentRegistered for each new VF");
        assert_eq!(signal.member, "ParentRegistered", "{signal:?}");
        assert_eq!(signal.source, "kernel", "{signal:?}");
        registered.push(signal.name);
    }
    registered.sort();
    names.sort();
    assert_eq!(registered, names);
}
