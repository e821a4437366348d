//! `gdbus call` as root or as uid 65534 (through `setpriv`): a client that
//! is not our code, for calls whose caller identity matters.

use std::process::{Output, Stdio};

use super::registry_client::{BUS_NAME, REGISTRY_IFACE, ROOT_PATH};

/// `gdbus call` on `address` to `dest` `path` `method` with `args` (GVariant
/// text), as root or (with `as_nobody`) as uid/gid 65534.
pub fn gdbus_call(
    address: &str,
    as_nobody: bool,
    dest: &str,
    path: &str,
    method: &str,
    args: &[&str],
) -> Output {
    super::command_as("gdbus", as_nobody)
        .args(["call", "--address", address, "--dest", dest])
        .args(["--object-path", path, "--method", method])
        .args(args)
        .env("HOME", "/")
        .stdin(Stdio::null())
        .output()
        .expect("run gdbus")
}

/// A `Registry1` method of the daemon as uid 65534.
pub fn registry_call_as_nobody(address: &str, method: &str, args: &[&str]) -> Output {
    gdbus_call(
        address,
        true,
        BUS_NAME,
        ROOT_PATH,
        &format!("{REGISTRY_IFACE}.{method}"),
        args,
    )
}

/// `RegisterParent(name, options, one type)` as uid 65534; `options` in
/// GVariant text (`@a{sv} {}` for none).
pub fn register_as_nobody(address: &str, name: &str, options: &str) -> Output {
    registry_call_as_nobody(
        address,
        "RegisterParent",
        &[
            name,
            options,
            "[{'Id': <'t-1'>, 'DeviceApi': <'vfio-pci'>, 'AvailableInstances': <uint32 2>}]",
        ],
    )
}

/// Status and output of a finished command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Asserts the call succeeded; returns its stdout.
pub fn assert_ok(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {}", describe(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the call failed with the D-Bus error `error` (full name) and a
/// message containing `text`.
pub fn assert_error(output: &Output, error: &str, text: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(error) && stderr.contains(text),
        "{what}: want {error} mentioning {text:?}; got {}",
        describe(output)
    );
}
