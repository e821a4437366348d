//! Packaging checks with the real tools: `make install` stages exactly the
//! shipped file set (binaries, udev rules and hook runner, D-Bus files,
//! systemd unit, man pages, completions, hook directory and example), the
//! Debian package from `make deb` (cargo-deb) lists the same files in
//! `dpkg-deb -c`, the RPM spec's %files names them too, and the systemd unit
//! passes `systemd-analyze verify` and agrees with the D-Bus activation file.
//!
//! Needs make, cargo-deb (`cargo install cargo-deb --locked`), dpkg-deb and
//! systemd-analyze; without one the test is skipped, or fails when `CI` is set.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::prereq;

/// Every file a package installs, with its mode (Debian layout for zsh).
const SHIPPED: &[(&str, u32)] = &[
    ("/usr/bin/mdevregd", 0o755),
    ("/usr/bin/mdevreg", 0o755),
    ("/usr/libexec/mdevreg/mdevreg-uevent-writer", 0o755),
    ("/usr/lib/udev/rules.d/70-mdevreg.rules", 0o644),
    ("/usr/lib/udev/mdevreg-run-hooks", 0o755),
    (
        "/usr/share/dbus-1/system.d/org.mdevreg.Registry1.conf",
        0o644,
    ),
    (
        "/usr/share/dbus-1/system-services/org.mdevreg.Registry1.service",
        0o644,
    ),
    (
        "/usr/share/dbus-1/interfaces/org.mdevreg.Registry1.xml",
        0o644,
    ),
    ("/usr/lib/systemd/system/mdevregd.service", 0o644),
    (
        "/usr/lib/systemd/system/mdevreg-uevent-writer.service",
        0o644,
    ),
    (
        "/usr/lib/systemd/system/mdevreg-uevent-writer.socket",
        0o644,
    ),
    ("/etc/mdevreg/hooks.d/README", 0o644),
    (
        "/usr/share/doc/mdevreg/examples/hooks.d/50-log-transition",
        0o755,
    ),
    (
        "/usr/share/polkit-1/actions/org.mdevreg.Registry1.policy",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/50-mdevreg-group.rules",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/prometheus/prometheus.yml",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/prometheus/mdevreg-rules.yml",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/prometheus/mdevreg-rules.test.yml",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/mdevregd.service.d/metrics-listen.conf",
        0o644,
    ),
    (
        "/usr/share/doc/mdevreg/examples/mdevregd.service.d/metrics-textfile.conf",
        0o644,
    ),
    ("/usr/share/man/man1/mdevreg.1.gz", 0o644),
    ("/usr/share/man/man8/mdevregd.8.gz", 0o644),
    ("/usr/share/bash-completion/completions/mdevreg", 0o644),
    ("/usr/share/bash-completion/completions/mdevregd", 0o644),
    ("/usr/share/zsh/vendor-completions/_mdevreg", 0o644),
    ("/usr/share/zsh/vendor-completions/_mdevregd", 0o644),
    ("/usr/share/fish/vendor_completions.d/mdevreg.fish", 0o644),
    ("/usr/share/fish/vendor_completions.d/mdevregd.fish", 0o644),
];
const DEBIAN_ZSH_DIR: &str = "/usr/share/zsh/vendor-completions";
const RPM_ZSH_DIR: &str = "/usr/share/zsh/site-functions";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target dir and profile directory name this test was built in
/// (`<target>/<profile>/deps/packaging-<hash>`), so `make` reuses the build.
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("profile dir name")
        .to_owned();
    let target = profile_dir.parent().expect("target dir").to_path_buf();
    (target, profile)
}

/// What the installed files may take at most: both binaries stripped are
/// 12 MB (release) to 25 MB (debug build), with their debug info over
/// 110 MB (release) and 200 MB (debug).
const INSTALLED_SIZE_BOUND: u64 = 40 * 1024 * 1024;

/// Whether the ELF file at `path` carries DWARF debug info.
fn has_debug_info(path: &Path) -> bool {
    section_names(path).iter().any(|name| name == ".debug_info")
}

/// The section names of the ELF file at `path` (`readelf -S`).
fn section_names(path: &Path) -> Vec<String> {
    let output = checked(
        Command::new("readelf")
            .args(["-S", "--wide"])
            .arg(path)
            .output()
            .expect("run readelf"),
        "readelf -S",
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('[')?;
            let (_, rest) = rest.split_once(']')?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

/// Total size of the regular files under `root`.
fn total_size(root: &Path) -> u64 {
    staged_files(root)
        .keys()
        .map(|path| {
            fs::metadata(root.join(path.trim_start_matches('/')))
                .map(|meta| meta.len())
                .unwrap_or(0)
        })
        .sum()
}

fn checked(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `make TARGET` in the crate with the build of this test.
fn make(target: &str, vars: &[(&str, String)]) -> Output {
    let (target_dir, profile) = target_and_profile();
    let mut command = Command::new("make");
    command
        .current_dir(manifest_dir())
        .arg(target)
        .arg(format!("TARGET_DIR={}", target_dir.display()))
        .arg(format!("PROFILE={profile}"));
    for (name, value) in vars {
        command.arg(format!("{name}={value}"));
    }
    let output = command.stdin(Stdio::null()).output().expect("run make");
    checked(output, &format!("make {target}"))
}

/// Regular files under `root` as absolute paths in the installed system,
/// with their permission bits.
fn staged_files(root: &Path) -> BTreeMap<String, u32> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read staging dir") {
            let entry = entry.expect("dir entry");
            let meta = fs::symlink_metadata(entry.path()).expect("stat");
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_owned();
                files.insert(
                    format!("/{}", relative.display()),
                    meta.permissions().mode() & 0o7777,
                );
            }
        }
    }
    files
}

fn expected(zsh_dir: &str) -> BTreeMap<String, u32> {
    SHIPPED
        .iter()
        .map(|(path, mode)| (path.replace(DEBIAN_ZSH_DIR, zsh_dir), *mode))
        .collect()
}

/// Parses `dpkg-deb -c` (`-rwxr-xr-x 0/0 SIZE DATE TIME ./path`): files only.
fn deb_files(listing: &str) -> BTreeMap<String, u32> {
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(perms), Some(path)) = (fields.first(), fields.get(5)) else {
            continue;
        };
        if perms.starts_with('d') {
            continue;
        }
        let mode = perms[1..]
            .chars()
            .fold(0u32, |mode, c| (mode << 1) | u32::from(c != '-'));
        files.insert(path.trim_start_matches('.').to_owned(), mode);
    }
    files
}

/// The %files list of the RPM spec with the Fedora values of its macros;
/// `%dir` lines are skipped, `%config(...)` prefixes dropped, a trailing `*`
/// (compressed man page) kept as written.
fn rpm_files(spec: &str) -> Vec<String> {
    let macros = [
        ("%{_bindir}", "/usr/bin"),
        ("%{_libexecdir}", "/usr/libexec"),
        ("%{_udevrulesdir}", "/usr/lib/udev/rules.d"),
        ("%{_unitdir}", "/usr/lib/systemd/system"),
        ("%{_sysconfdir}", "/etc"),
        ("%{_docdir}", "/usr/share/doc"),
        ("%{_mandir}", "/usr/share/man"),
        ("%{_datadir}", "/usr/share"),
        ("%{_prefix}", "/usr"),
    ];
    let mut in_files = false;
    let mut files = Vec::new();
    for line in spec.lines() {
        let line = line.trim();
        if line.starts_with('%') && !line.starts_with("%{") {
            let section = line.split_whitespace().next().unwrap_or_default();
            match section {
                "%files" => {
                    in_files = true;
                    continue;
                }
                "%dir" | "%config(noreplace)" | "%config" | "%doc" | "%license" => {}
                _ => {
                    in_files = false;
                    continue;
                }
            }
        }
        if !in_files || line.is_empty() || line.starts_with('#') || line.starts_with("%dir") {
            continue;
        }
        let mut path = line
            .trim_start_matches("%config(noreplace)")
            .trim_start_matches("%config")
            .trim()
            .to_owned();
        for (name, value) in macros {
            path = path.replace(name, value);
        }
        assert!(!path.contains('%'), "unexpanded macro in %files: {line}");
        files.push(path);
    }
    files
}

#[test]
fn make_install_deb_and_rpm_ship_the_same_files() {
    const TEST: &str = "make_install_deb_and_rpm_ship_the_same_files";
    let tools = [
        "make",
        "cargo",
        "cargo-deb",
        "dpkg-deb",
        "gzip",
        "strip",
        "objcopy",
        "readelf",
    ];
    if !prereq::require_tools(TEST, &tools) {
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    let assets = work.path().join("assets");
    let stage = work.path().join("stage");
    let debs = work.path().join("debs");
    fs::create_dir_all(&debs).expect("deb output dir");

    // make install (builds the binaries and the generated assets first).
    make(
        "install",
        &[
            ("DESTDIR", stage.display().to_string()),
            ("ASSETS_DIR", assets.display().to_string()),
            ("ZSHCOMPDIR", DEBIAN_ZSH_DIR.to_owned()),
        ],
    );
    assert_eq!(
        staged_files(&stage),
        expected(DEBIAN_ZSH_DIR),
        "make install"
    );
    // Stripped binaries; the installation stays small.
    for bin in [
        "usr/bin/mdevregd",
        "usr/bin/mdevreg",
        "usr/libexec/mdevreg/mdevreg-uevent-writer",
    ] {
        assert!(
            !has_debug_info(&stage.join(bin)),
            "make install left debug info in {bin}"
        );
    }
    let size = total_size(&stage);
    assert!(
        size < INSTALLED_SIZE_BOUND,
        "make install installs {size} bytes (bound {INSTALLED_SIZE_BOUND})"
    );
    // With DEBUGDIR the debug info is kept beside, split out and linked.
    let with_debug = work.path().join("stage-debug");
    make(
        "install",
        &[
            ("DESTDIR", with_debug.display().to_string()),
            ("ASSETS_DIR", assets.display().to_string()),
            ("NO_BUILD", "1".to_owned()),
            ("DEBUGDIR", "/usr/lib/debug".to_owned()),
        ],
    );
    for bin in [
        "usr/bin/mdevregd",
        "usr/bin/mdevreg",
        "usr/libexec/mdevreg/mdevreg-uevent-writer",
    ] {
        let binary = with_debug.join(bin);
        let debug = with_debug
            .join("usr/lib/debug")
            .join(format!("{bin}.debug"));
        assert!(!has_debug_info(&binary), "{}", binary.display());
        assert!(
            section_names(&binary)
                .iter()
                .any(|name| name == ".gnu_debuglink"),
            "{} has no .gnu_debuglink",
            binary.display()
        );
        assert!(
            has_debug_info(&debug),
            "{} has no debug info",
            debug.display()
        );
    }
    drop(fs::remove_dir_all(&with_debug));

    let man = fs::read(stage.join("usr/share/man/man8/mdevregd.8.gz")).expect("man page");
    assert_eq!(&man[..2], &[0x1f, 0x8b], "man pages are gzip files");
    let unit = fs::read_to_string(stage.join("usr/lib/systemd/system/mdevregd.service"))
        .expect("staged unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/mdevregd --bus system"),
        "{unit}"
    );

    // The Debian package (the dev profile: this checks packaging, not codegen).
    // cargo-deb reads the assets from target/assets, as `make deb` makes them.
    make(
        "deb",
        &[(
            "CARGO_DEB_FLAGS",
            format!("--profile dev --fast --output {}", debs.display()),
        )],
    );
    let deb = fs::read_dir(&debs)
        .expect("read deb dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}", debs.display()));
    let listing = checked(
        Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .expect("dpkg-deb -c"),
        "dpkg-deb -c",
    );
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut in_deb = deb_files(&listing);
    // cargo-deb writes the Debian copyright file itself.
    assert!(
        in_deb.remove("/usr/share/doc/mdevreg/copyright").is_some(),
        "{listing}"
    );
    assert_eq!(
        in_deb,
        expected(DEBIAN_ZSH_DIR),
        "dpkg-deb -c {}",
        deb.display()
    );

    // The package's binaries are stripped, its size bounded; the debug info
    // is in a separate -dbgsym package.
    let installed_kib: u64 = String::from_utf8_lossy(
        &checked(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Installed-Size")
                .output()
                .expect("dpkg-deb -f"),
            "dpkg-deb -f",
        )
        .stdout,
    )
    .trim()
    .parse()
    .expect("Installed-Size in KiB");
    assert!(
        installed_kib * 1024 < INSTALLED_SIZE_BOUND,
        "the .deb installs {installed_kib} KiB (bound {INSTALLED_SIZE_BOUND} bytes)"
    );
    let unpacked = work.path().join("unpacked");
    checked(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .output()
            .expect("dpkg-deb -x"),
        "dpkg-deb -x",
    );
    for bin in [
        "usr/bin/mdevregd",
        "usr/bin/mdevreg",
        "usr/libexec/mdevreg/mdevreg-uevent-writer",
    ] {
        assert!(
            !has_debug_info(&unpacked.join(bin)),
            "the .deb ships {bin} with debug info"
        );
    }
    drop(fs::remove_dir_all(&unpacked));
    let dbgsym = fs::read_dir(&debs)
        .expect("read deb dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("mdevreg-dbgsym_"))
        })
        .unwrap_or_else(|| panic!("no mdevreg-dbgsym package in {}", debs.display()));
    let listing = checked(
        Command::new("dpkg-deb")
            .arg("-c")
            .arg(&dbgsym)
            .output()
            .expect("dpkg-deb -c dbgsym"),
        "dpkg-deb -c dbgsym",
    );
    let debug_files = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|line| line.contains("/usr/lib/debug/.build-id/") && line.ends_with(".debug"))
        .count();
    // mdevregd, mdevreg, mdevreg-uevent-writer.
    assert_eq!(
        debug_files,
        3,
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );

    let control = work.path().join("control");
    checked(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&control)
            .output()
            .expect("dpkg-deb -e"),
        "dpkg-deb -e",
    );
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.contains("/etc/mdevreg/hooks.d/README"),
        "conffiles: {conffiles}"
    );
    let postinst = fs::read_to_string(control.join("postinst")).unwrap_or_default();
    assert!(
        postinst.contains("mdevregd.service")
            && postinst.contains("mdevreg-uevent-writer.socket")
            && postinst.contains("deb-systemd-helper"),
        "postinst enables the units: {postinst}"
    );
    assert!(manifest_dir()
        .join("target/assets/man/mdevregd.8.gz")
        .exists());

    // The RPM spec names the same files (zsh in Fedora's directory).
    let spec =
        fs::read_to_string(manifest_dir().join("packaging/rpm/mdevreg.spec")).expect("read spec");
    // rpmbuild strips and writes the -debuginfo package itself: the spec
    // installs unstripped binaries and keeps debuginfo generation on.
    assert!(
        spec.contains("make install NO_BUILD=1 NO_STRIP=1"),
        "{spec}"
    );
    assert!(!spec.contains("debug_package %{nil}"), "{spec}");
    let mut in_rpm = rpm_files(&spec);
    in_rpm.sort();
    let mut want: Vec<String> = expected(RPM_ZSH_DIR)
        .into_keys()
        .map(|path| {
            if path.starts_with("/usr/share/man/") {
                format!("{}*", path.trim_end_matches(".gz"))
            } else {
                path
            }
        })
        .collect();
    want.sort();
    assert_eq!(in_rpm, want, "%files of packaging/rpm/mdevreg.spec");
}

/// `KEY=value` lines of an ini-style file, first value wins.
fn ini_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().to_owned())
}

#[test]
fn unit_passes_systemd_analyze_and_matches_dbus_activation() {
    const TEST: &str = "unit_passes_systemd_analyze_and_matches_dbus_activation";
    if !prereq::require_tools(TEST, &["make", "cargo", "gzip", "systemd-analyze"]) {
        return;
    }
    let unit_path = manifest_dir().join("packaging/systemd/mdevregd.service");
    let unit = fs::read_to_string(&unit_path).expect("read unit");
    let activation = fs::read_to_string(manifest_dir().join("dbus/org.mdevreg.Registry1.service"))
        .expect("read D-Bus service file");

    // The unit, the activation file and the bus name agree.
    assert_eq!(ini_value(&unit, "Type").as_deref(), Some("dbus"));
    assert_eq!(
        ini_value(&unit, "BusName").as_deref(),
        Some("org.mdevreg.Registry1")
    );
    assert_eq!(
        ini_value(&activation, "Name").as_deref(),
        Some("org.mdevreg.Registry1")
    );
    assert_eq!(
        ini_value(&activation, "SystemdService").as_deref(),
        Some("mdevregd.service")
    );
    // Under systemd the synthetic uevents go through the writer's socket;
    // the bus's own activation (no systemd) runs the daemon without it.
    let exec_start = ini_value(&unit, "ExecStart").expect("ExecStart");
    let socket_unit =
        fs::read_to_string(manifest_dir().join("packaging/systemd/mdevreg-uevent-writer.socket"))
            .expect("read the writer's socket unit");
    let writer_socket = ini_value(&socket_unit, "ListenStream").expect("ListenStream");
    assert_eq!(
        exec_start,
        format!("/usr/bin/mdevregd --bus system --uevent-writer {writer_socket}")
    );
    assert_eq!(
        ini_value(&activation, "Exec").as_deref(),
        Some("/usr/bin/mdevregd --bus system")
    );
    for key in ["Wants", "After"] {
        assert_eq!(
            ini_value(&unit, key).as_deref(),
            Some("mdevreg-uevent-writer.socket"),
            "{key}="
        );
    }
    assert_eq!(
        ini_value(&socket_unit, "SocketMode").as_deref(),
        Some("0600")
    );
    assert_eq!(ini_value(&socket_unit, "Accept").as_deref(), Some("no"));
    for (key, value) in [
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "mdevreg"),
        ("StateDirectory", "mdevreg"),
        ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK"),
        ("CapabilityBoundingSet", "CAP_SYS_ADMIN CAP_NET_ADMIN"),
    ] {
        assert_eq!(ini_value(&unit, key).as_deref(), Some(value), "{key}=");
    }
    // Network and user namespacing would cut the daemon off the host's uevents.
    for key in ["PrivateNetwork", "PrivateUsers"] {
        assert!(
            ini_value(&unit, key).is_none_or(|v| v == "no"),
            "{key}= must stay off"
        );
    }

    // systemd-analyze verify checks ExecStart= and the man pages of
    // Documentation=: point them at the built binary and generated pages.
    let work = tempfile::tempdir().expect("work dir");
    let assets = work.path().join("assets");
    make("assets", &[("ASSETS_DIR", assets.display().to_string())]);
    let man_root = work.path().join("man");
    for (page, section) in [("mdevreg.1", "man1"), ("mdevregd.8", "man8")] {
        fs::create_dir_all(man_root.join(section)).expect("man dir");
        fs::copy(
            assets.join("man").join(page),
            man_root.join(section).join(page),
        )
        .expect("copy man page");
    }
    let unit_dir = work.path().join("units");
    fs::create_dir_all(&unit_dir).expect("unit dir");
    let test_unit = unit_dir.join("mdevregd.service");
    fs::write(
        &test_unit,
        unit.replace("/usr/bin/mdevregd", env!("CARGO_BIN_EXE_mdevregd")),
    )
    .expect("write test unit");
    let verify = |unit_file: &Path| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit_file)
            .env("MANPATH", &man_root)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("run systemd-analyze verify")
    };
    // The writer's units, beside it (mdevregd.service wants the socket).
    let mut writer_units = Vec::new();
    for name in [
        "mdevreg-uevent-writer.socket",
        "mdevreg-uevent-writer.service",
    ] {
        let text = fs::read_to_string(manifest_dir().join("packaging/systemd").join(name))
            .expect("read the writer's unit");
        let path = unit_dir.join(name);
        fs::write(
            &path,
            text.replace(
                "/usr/libexec/mdevreg/mdevreg-uevent-writer",
                env!("CARGO_BIN_EXE_mdevreg-uevent-writer"),
            ),
        )
        .expect("write the writer's unit");
        writer_units.push(path);
    }
    for unit_file in [&test_unit, &writer_units[0], &writer_units[1]] {
        let output = verify(unit_file);
        let messages = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success()
                && !messages.contains("mdevregd")
                && !messages.contains("mdevreg-uevent-writer"),
            "{}: systemd-analyze verify is not clean ({}):\n{messages}",
            unit_file.display(),
            output.status
        );
    }
    // The writer opens /sys for writing (its code limits it to the VFs'
    // uevent files); everything else is shut.
    let writer_unit = fs::read_to_string(&writer_units[1]).expect("read");
    for (key, value) in [
        ("ProtectKernelTunables", "no"),
        ("CapabilityBoundingSet", ""),
        ("PrivateNetwork", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(
            ini_value(&writer_unit, key).as_deref(),
            Some(value),
            "writer {key}="
        );
    }

    // Each shipped drop-in example, on top of the unit, verifies just as
    // clean (systemd-analyze reads `<unit>.d/` next to the unit file).
    let drop_in_dir = unit_dir.join("mdevregd.service.d");
    fs::create_dir_all(&drop_in_dir).expect("drop-in dir");
    let shipped = manifest_dir().join("packaging/systemd/mdevregd.service.d");
    let mut examples: Vec<PathBuf> = fs::read_dir(&shipped)
        .expect("list drop-ins")
        .map(|entry| entry.expect("entry").path())
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "no drop-in examples");
    for example in &examples {
        let name = example.file_name().expect("name");
        let text = fs::read_to_string(example).expect("read drop-in");
        let installed = drop_in_dir.join(name);
        fs::write(
            &installed,
            text.replace("/usr/bin/mdevregd", env!("CARGO_BIN_EXE_mdevregd")),
        )
        .expect("write drop-in");
        let output = verify(&test_unit);
        let messages = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !messages.contains("mdevregd"),
            "{}: systemd-analyze verify is not clean ({}):\n{messages}",
            example.display(),
            output.status
        );
        fs::remove_file(&installed).expect("remove drop-in");
    }
    // Control: a drop-in systemd cannot use is reported (a relative path).
    let bad = drop_in_dir.join("bad.conf");
    fs::write(&bad, "[Service]\nReadWritePaths=-sys/devices/x/uevent\n").expect("write");
    let output = verify(&test_unit);
    let messages = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        messages.contains("bad.conf") && messages.contains("not absolute"),
        "verify must report a bad drop-in:\n{messages}"
    );
    fs::remove_file(&bad).expect("remove bad drop-in");

    // Control: the same check fails for a unit whose binary is missing.
    let broken_dir = work.path().join("broken");
    fs::create_dir_all(&broken_dir).expect("broken dir");
    let broken = broken_dir.join("mdevregd.service");
    fs::write(
        &broken,
        unit.replace("/usr/bin/mdevregd", "/nonexistent/mdevregd"),
    )
    .expect("write broken unit");
    assert!(
        !verify(&broken).status.success(),
        "verify must catch a missing ExecStart binary"
    );

    // Hardening stays at systemd's "OK" exposure or better (at most 2.5);
    // the writer's at "SAFE" (at most 1.5).
    for (unit_file, threshold) in [(&test_unit, "25"), (&writer_units[1], "15")] {
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--threshold={threshold}"))
            .arg(unit_file)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("run systemd-analyze security");
        assert!(
            security.status.success(),
            "{}: exposure above {threshold}/10:\n{}",
            unit_file.display(),
            String::from_utf8_lossy(&security.stdout)
        );
    }
}
