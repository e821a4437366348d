//! Helper processes: the running test binary started again in a helper
//! role (only its test `helper_process`, with [`HELPER_ROLE_ENV`] naming
//! the role; that entry point is `#[ignore]`d, so a normal test run lists
//! it as ignored instead of counting it as a passing test, and helpers are
//! started with `--ignored`), optionally as uid/gid [`NOBODY`] through `setpriv`; it talks
//! to its parent in stdout lines prefixed [`HELPER_LINE_PREFIX`].

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use super::NOBODY;

/// Environment variable selecting a helper role in a re-run test binary.
pub const HELPER_ROLE_ENV: &str = "MDEVREG_TEST_HELPER_ROLE";
/// Prefix of the lines a helper process prints for its parent.
pub const HELPER_LINE_PREFIX: &str = "HELPER ";

/// Runs this test binary again as a helper: only the test `helper_process`,
/// with [`HELPER_ROLE_ENV`] set to `role` and `env`; as uid/gid 65534 when
/// `as_nobody` (through `setpriv`). Its stdout is piped.
pub fn spawn_helper(role: &str, env: &[(&str, String)], as_nobody: bool) -> Child {
    spawn_helper_as(role, env, as_nobody.then_some(&[][..]))
}

/// [`spawn_helper`] with the uid/gid 65534 case given extra `setpriv`
/// arguments (capabilities, say) when `nobody_args` is `Some`.
pub fn spawn_helper_as(role: &str, env: &[(&str, String)], nobody_args: Option<&[&str]>) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    let mut command = if let Some(extra) = nobody_args {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .args(extra)
            .arg("--")
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    command
        .args([
            "--exact",
            "helper_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ROLE_ENV, role)
        .env_remove("CI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn helper process")
}

/// The helper role of this process, if it is a helper.
pub fn helper_role() -> Option<String> {
    std::env::var(HELPER_ROLE_ENV).ok()
}

/// Prints one line for the parent process.
pub fn helper_say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{HELPER_LINE_PREFIX}{text}");
    let _ = stdout.flush();
}

/// Reads the helper's next line (without the prefix); `None` at EOF.
pub fn helper_next_line(stdout: &mut BufReader<ChildStdout>) -> Option<String> {
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // libtest may print "test helper_process ... " before the first line.
        if let Some(at) = line.find(HELPER_LINE_PREFIX) {
            return Some(line[at + HELPER_LINE_PREFIX.len()..].trim_end().to_owned());
        }
    }
}

/// Runs a helper to completion and returns its lines; panics if it fails.
pub fn run_helper(role: &str, env: &[(&str, String)], as_nobody: bool) -> Vec<String> {
    run_helper_as(role, env, as_nobody.then_some(&[][..]))
}

/// [`run_helper`] with extra `setpriv` arguments (see [`spawn_helper_as`]).
pub fn run_helper_as(
    role: &str,
    env: &[(&str, String)],
    nobody_args: Option<&[&str]>,
) -> Vec<String> {
    let mut child = spawn_helper_as(role, env, nobody_args);
    let mut stdout = BufReader::new(child.stdout.take().expect("helper stdout"));
    let mut lines = Vec::new();
    while let Some(line) = helper_next_line(&mut stdout) {
        lines.push(line);
    }
    let status = child.wait().expect("wait for helper");
    assert!(
        status.success(),
        "helper {role} failed ({status}): {lines:?}"
    );
    lines
}
