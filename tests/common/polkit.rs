//! A real `polkitd` for tests, on a private system-type bus: started in its
//! own mount namespace (`unshare -m`) where `/usr/share/polkit-1/actions`
//! holds only the shipped `packaging/polkit/org.mdevreg.Registry1.policy`
//! and both rules directories hold only the test's rules file. polkitd
//! drops to its `polkitd` user itself; `DBUS_SYSTEM_BUS_ADDRESS` points it
//! at the bus, which must include polkit's own bus policy
//! ([`POLKIT_BUS_POLICY`]). Its output (rules' `polkit.log` lines too) goes
//! to a log file. Killed on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zbus::Connection;

use super::prereq::open_tempdir;

/// The polkit daemon (Debian package `polkitd`).
pub const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
/// polkit's system bus policy (lets user `polkitd` own its name).
pub const POLKIT_BUS_POLICY: &str = "/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf";
/// polkit's bus name.
pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

/// The shipped action file.
pub fn shipped_actions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/polkit/org.mdevreg.Registry1.policy")
}

/// A running polkitd.
pub struct Polkitd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Polkitd {
    /// Starts polkitd on the bus at `address` with `rules` as its only rules
    /// file (`None`: no rules at all, so the actions' defaults decide).
    pub fn start(address: &str, rules: Option<&str>) -> Polkitd {
        let dir = open_tempdir("mdevreg-polkit-");
        let actions = dir.path().join("actions");
        let rules_dir = dir.path().join("rules.d");
        for sub in [&actions, &rules_dir] {
            fs::create_dir_all(sub).expect("create polkit dirs");
            make_readable(sub);
        }
        let action_file = actions.join("org.mdevreg.Registry1.policy");
        fs::copy(shipped_actions(), &action_file).expect("copy the action file");
        make_readable(&action_file);
        if let Some(rules) = rules {
            let file = rules_dir.join("10-mdevreg-test.rules");
            fs::write(&file, rules).expect("write rules");
            make_readable(&file);
        }
        let log = fs::File::create(dir.path().join("polkitd.log")).expect("polkitd log");
        let script = format!(
            "set -e; mount --make-rprivate /; \
             mount --bind {actions} /usr/share/polkit-1/actions; \
             mount --bind {rules} /usr/share/polkit-1/rules.d; \
             mount --bind {rules} /etc/polkit-1/rules.d; \
             exec {POLKITD}",
            actions = actions.display(),
            rules = rules_dir.display(),
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn polkitd");
        Polkitd {
            child: Some(child),
            dir,
        }
    }

    /// Waits until polkitd owns its name on `connection`'s bus; panics
    /// (with its log) if it exits or takes over 20 s.
    pub async fn wait_ready(&mut self, connection: &Connection) {
        let dbus = zbus::fdo::DBusProxy::new(connection)
            .await
            .expect("DBusProxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let owned = dbus
                .name_has_owner(POLKIT_NAME.try_into().expect("name"))
                .await
                .unwrap_or(false);
            if owned {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("polkitd exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "polkitd did not own {POLKIT_NAME}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// polkitd's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("polkitd.log")).unwrap_or_default()
    }

    /// Kills polkitd and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Polkitd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// polkitd runs as user `polkitd`: its files must be world-readable.
fn make_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}
