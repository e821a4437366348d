//! Validation of `RegisterParent(s name, a{sv} options, aa{sv} types)`
//! arguments (SPEC §3), pure: arguments in, a [`Registration`] or the first
//! [`Violation`] out.
//!
//! Rules (beyond the SPEC's, where it leaves room, as decided here):
//! - `name`: 1..=255 bytes of `[A-Za-z0-9:._-]`, not `.` or `..`.
//! - every string value: at most 4096 bytes, else `LimitExceeded`; at most
//!   1024 types, else `LimitExceeded`.
//! - `DevPath` (default `/devices/virtual/mdevreg/<name>`): starts with
//!   `/devices/`, at most 512 bytes (uevent size bound), components
//!   non-empty, not `.`/`..`, printable ASCII without spaces (no NUL).
//! - `Subsystem` (default `mdevreg`), type `Id` and `DeviceApi`: 1..=255
//!   bytes of `[A-Za-z0-9:._-]`, not `.`/`..` (kernel names; a type id is a
//!   sysfs directory name). `Driver`: empty or the same.
//! - `Lifetime`: `owner` (default) or `persistent`.
//! - `AllowInteraction`: `b` (default false), passed on to polkit.
//! - callers other than root ([`require_default_location`]): `DevPath` and
//!   `Subsystem` must be the defaults (an option naming anything else is
//!   `InvalidArgument`); where they may point for anyone is
//!   [`crate::boundary`]'s job.
//! - `Name`, `Description`: any string within the length bound.
//! - `AvailableInstances`: `u` (default 0).
//! - unknown keys, a value of the wrong D-Bus type (a `v` inside the `v`
//!   included), a missing `Id` or `DeviceApi` and a repeated `Id` are
//!   `InvalidArgument`.
//!
//! The bounds keep every emitted uevent within the kernel's 2048-byte
//! buffer: the devpath twice (≤512 each) + SUBSYSTEM (≤255) + MDEV_PARENT
//! (≤255) and the fixed keys stay below it.

use std::collections::{HashMap, HashSet};

use zbus::{OwnedVariant, Variant};

use super::errors::Error;
use crate::model::{Lifetime, MdevType, ParentInfo};
use crate::persist::{is_valid_parent_name, MAX_STRING_BYTES, MAX_TYPES_PER_PARENT};

/// Longest accepted `DevPath`. An injected uevent carries the devpath twice
/// (header and DEVPATH=) within the kernel's 2048-byte buffer, beside
/// SUBSYSTEM, MDEV_PARENT and the fixed keys; 512 keeps the longest valid
/// registration encodable (checked in `emit`'s tests).
pub const MAX_DEVPATH_BYTES: usize = 512;
/// Longest subsystem, driver, type id or device API.
pub const MAX_KERNEL_NAME_BYTES: usize = 255;
/// Subsystem of a userspace parent registered without `Subsystem`.
pub const DEFAULT_SUBSYSTEM: &str = "mdevreg";
/// Directory of the default `DevPath` (`<dir>/<name>`).
pub const DEFAULT_DEVPATH_DIR: &str = "/devices/virtual/mdevreg";

/// Option keys of `RegisterParent`.
pub const OPTION_KEYS: [&str; 5] = [
    "DevPath",
    "Subsystem",
    "Driver",
    "Lifetime",
    "AllowInteraction",
];
/// Keys of one `types` entry.
pub const TYPE_KEYS: [&str; 5] = [
    "Id",
    "Name",
    "Description",
    "DeviceApi",
    "AvailableInstances",
];

/// A valid registration request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Normalised (types sorted by id).
    pub info: ParentInfo,
    pub lifetime: Lifetime,
    /// The caller lets polkit ask it to authenticate.
    pub allow_interaction: bool,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Malformed: reported as `InvalidArgument`.
    #[error("{0}")]
    Invalid(String),
    /// Over a bound: reported as `LimitExceeded`.
    #[error("{0}")]
    Limit(String),
}

impl From<Violation> for Error {
    fn from(violation: Violation) -> Error {
        match violation {
            Violation::Invalid(message) => Error::InvalidArgument(message),
            Violation::Limit(message) => Error::LimitExceeded(message),
        }
    }
}

/// Checks all arguments of `RegisterParent`; returns the first violation.
pub fn registration(
    name: &str,
    options: &HashMap<String, OwnedVariant>,
    types: &[HashMap<String, OwnedVariant>],
) -> Result<Registration, Violation> {
    if name.len() > MAX_STRING_BYTES {
        return Err(Violation::Limit(format!(
            "name of {} bytes (at most {MAX_STRING_BYTES})",
            name.len()
        )));
    }
    if !is_valid_parent_name(name) {
        return Err(Violation::Invalid(format!(
            "invalid parent name {}: want 1..=255 bytes of [A-Za-z0-9:._-], not . or ..",
            quoted(name)
        )));
    }
    let mut info = ParentInfo {
        name: name.to_owned(),
        devpath: format!("{DEFAULT_DEVPATH_DIR}/{name}"),
        subsystem: DEFAULT_SUBSYSTEM.to_owned(),
        driver: String::new(),
        backend: Default::default(),
        physical_device: String::new(),
        types: Vec::new(),
    };
    let mut lifetime = Lifetime::Owner;
    let mut allow_interaction = false;
    for key in sorted_keys(options) {
        let value = &options[key];
        match key {
            "DevPath" => info.devpath = devpath(string(value, "option DevPath")?)?,
            "Subsystem" => {
                info.subsystem =
                    kernel_name(string(value, "option Subsystem")?, "Subsystem")?.to_owned()
            }
            "Driver" => {
                let driver = string(value, "option Driver")?;
                if !driver.is_empty() {
                    kernel_name(driver, "Driver")?;
                }
                info.driver = driver.to_owned();
            }
            "Lifetime" => {
                let text = string(value, "option Lifetime")?;
                lifetime = Lifetime::parse_option(text).ok_or_else(|| {
                    Violation::Invalid(format!(
                        "option Lifetime is {}: want owner or persistent",
                        quoted(text)
                    ))
                })?;
            }
            "AllowInteraction" => match &**value {
                Variant::Bool(allow) => allow_interaction = *allow,
                other => {
                    return Err(Violation::Invalid(format!(
                        "option AllowInteraction must be of type b, not {}",
                        other.value_signature()
                    )))
                }
            },
            other => {
                return Err(Violation::Invalid(format!(
                    "unknown option {} (known: {})",
                    quoted(other),
                    OPTION_KEYS.join(", ")
                )))
            }
        }
    }
    if types.len() > MAX_TYPES_PER_PARENT {
        return Err(Violation::Limit(format!(
            "{} types (at most {MAX_TYPES_PER_PARENT})",
            types.len()
        )));
    }
    let mut ids = HashSet::with_capacity(types.len());
    for (index, entry) in types.iter().enumerate() {
        let mdev_type = mdev_type(index, entry)?;
        if !ids.insert(mdev_type.id.clone()) {
            return Err(Violation::Invalid(format!(
                "type {index}: duplicate Id {}",
                quoted(&mdev_type.id)
            )));
        }
        info.types.push(mdev_type);
    }
    info.normalize();
    Ok(Registration {
        info,
        lifetime,
        allow_interaction,
    })
}

/// A caller other than root registers at the default place only:
/// `DevPath` `/devices/virtual/mdevreg/<name>`, `Subsystem` `mdevreg`.
pub fn require_default_location(registration: &Registration) -> Result<(), Violation> {
    let info = &registration.info;
    let devpath = format!("{DEFAULT_DEVPATH_DIR}/{}", info.name);
    if info.devpath != devpath {
        return Err(Violation::Invalid(format!(
            "option DevPath {}: only root may choose it (others get {})",
            quoted(&info.devpath),
            quoted(&devpath)
        )));
    }
    if info.subsystem != DEFAULT_SUBSYSTEM {
        return Err(Violation::Invalid(format!(
            "option Subsystem {}: only root may choose it (others get {DEFAULT_SUBSYSTEM:?})",
            quoted(&info.subsystem)
        )));
    }
    Ok(())
}

/// One `types` entry.
fn mdev_type(index: usize, entry: &HashMap<String, OwnedVariant>) -> Result<MdevType, Violation> {
    let mut mdev_type = MdevType::default();
    let (mut has_id, mut has_api) = (false, false);
    for key in sorted_keys(entry) {
        let value = &entry[key];
        let what = format!("type {index}: {key}");
        match key {
            "Id" => {
                mdev_type.id = kernel_name(string(value, &what)?, &what)?.into();
                has_id = true;
            }
            "DeviceApi" => {
                mdev_type.device_api = kernel_name(string(value, &what)?, &what)?.into();
                has_api = true;
            }
            "Name" => mdev_type.name = string(value, &what)?.into(),
            "Description" => mdev_type.description = string(value, &what)?.into(),
            "AvailableInstances" => match &**value {
                Variant::U32(count) => mdev_type.available_instances = *count,
                other => {
                    return Err(Violation::Invalid(format!(
                        "{what} must be of type u, not {}",
                        other.value_signature()
                    )))
                }
            },
            other => {
                return Err(Violation::Invalid(format!(
                    "type {index}: unknown key {} (known: {})",
                    quoted(other),
                    TYPE_KEYS.join(", ")
                )))
            }
        }
    }
    if !has_id {
        return Err(Violation::Invalid(format!("type {index}: Id is required")));
    }
    if !has_api {
        return Err(Violation::Invalid(format!(
            "type {index}: DeviceApi is required"
        )));
    }
    Ok(mdev_type)
}

/// Keys in a fixed order, so the reported violation does not depend on the
/// hash order.
fn sorted_keys(map: &HashMap<String, OwnedVariant>) -> Vec<&str> {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

/// The string in `value`, within the length bound.
fn string<'v>(value: &'v OwnedVariant, what: &str) -> Result<&'v str, Violation> {
    match &**value {
        Variant::Str(text) => {
            let text: &str = text;
            if text.len() > MAX_STRING_BYTES {
                return Err(Violation::Limit(format!(
                    "{what} is {} bytes (at most {MAX_STRING_BYTES})",
                    text.len()
                )));
            }
            Ok(text)
        }
        other => Err(Violation::Invalid(format!(
            "{what} must be of type s, not {}",
            other.value_signature()
        ))),
    }
}

/// A subsystem, driver, type id or device API.
fn kernel_name<'t>(text: &'t str, what: &str) -> Result<&'t str, Violation> {
    let valid = (1..=MAX_KERNEL_NAME_BYTES).contains(&text.len())
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'));
    if valid {
        Ok(text)
    } else {
        Err(Violation::Invalid(format!(
            "{what} is {}: want 1..={MAX_KERNEL_NAME_BYTES} bytes of [A-Za-z0-9:._-], not . or ..",
            quoted(text)
        )))
    }
}

/// A `DevPath` option.
fn devpath(text: &str) -> Result<String, Violation> {
    let invalid = |why: &str| Violation::Invalid(format!("DevPath {} {why}", quoted(text)));
    if text.len() > MAX_DEVPATH_BYTES {
        return Err(Violation::Invalid(format!(
            "DevPath of {} bytes (at most {MAX_DEVPATH_BYTES})",
            text.len()
        )));
    }
    let Some(rest) = text.strip_prefix("/devices/") else {
        return Err(invalid("does not start with /devices/"));
    };
    for component in rest.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(invalid("has an empty, . or .. component"));
        }
        if !component.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("has a byte that is not printable ASCII"));
        }
    }
    Ok(text.to_owned())
}

/// At most 64 characters of untrusted text, quoted, for messages and logs.
pub fn quoted(text: &str) -> String {
    let mut short: String = text.chars().take(64).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> OwnedVariant {
        OwnedVariant::from(zbus::Str::from(text.to_owned()))
    }

    fn opts(entries: &[(&str, OwnedVariant)]) -> HashMap<String, OwnedVariant> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn good_type(id: &str) -> HashMap<String, OwnedVariant> {
        opts(&[
            ("Id", s(id)),
            ("DeviceApi", s("vfio-pci")),
            ("AvailableInstances", OwnedVariant::from(4u32)),
            ("Name", s("GVTg_V5_4")),
            ("Description", s("low_gm_size: 128MB\nhigh_gm_size: 512MB")),
        ])
    }

    fn invalid(result: Result<Registration, Violation>) -> String {
        match result {
            Err(Violation::Invalid(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn limit(result: Result<Registration, Violation>) -> String {
        match result {
            Err(Violation::Limit(message)) => message,
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let reg = registration("vgpu0", &HashMap::new(), &[good_type("t-1")]).unwrap();
        assert_eq!(reg.lifetime, Lifetime::Owner);
        assert_eq!(reg.info.devpath, "/devices/virtual/mdevreg/vgpu0");
        assert_eq!(reg.info.subsystem, "mdevreg");
        assert_eq!(reg.info.driver, "");
        let t = &reg.info.types[0];
        assert_eq!(
            (t.id.as_str(), t.device_api.as_str(), t.available_instances),
            ("t-1", "vfio-pci", 4)
        );
        assert!(t.description.contains('\n'));
        assert!(t.devices.is_empty());
    }

    #[test]
    fn allow_interaction_is_a_boolean_option() {
        let reg = registration("p", &HashMap::new(), &[good_type("t-1")]).unwrap();
        assert!(!reg.allow_interaction);
        let options = opts(&[("AllowInteraction", OwnedVariant::from(true))]);
        let reg = registration("p", &options, &[good_type("t-1")]).unwrap();
        assert!(reg.allow_interaction);
        let options = opts(&[("AllowInteraction", s("true"))]);
        let message = invalid(registration("p", &options, &[good_type("t-1")]));
        assert!(message.contains("AllowInteraction"), "{message}");
    }

    #[test]
    fn unprivileged_callers_get_the_default_location() {
        let reg = registration("p0", &HashMap::new(), &[good_type("t-1")]).unwrap();
        assert_eq!(require_default_location(&reg), Ok(()));
        // Spelling the defaults out is fine.
        let options = opts(&[
            ("DevPath", s("/devices/virtual/mdevreg/p0")),
            ("Subsystem", s("mdevreg")),
        ]);
        let reg = registration("p0", &options, &[good_type("t-1")]).unwrap();
        assert_eq!(require_default_location(&reg), Ok(()));
        for (key, value) in [
            ("DevPath", "/devices/virtual/mdevreg/other"),
            ("DevPath", "/devices/virtual/block/loop0"),
            ("Subsystem", "block"),
        ] {
            let reg = registration("p0", &opts(&[(key, s(value))]), &[good_type("t-1")]).unwrap();
            let err = require_default_location(&reg).unwrap_err();
            assert!(
                matches!(&err, Violation::Invalid(m) if m.contains(key) && m.contains("only root")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn all_options_and_sorted_types() {
        let options = opts(&[
            ("DevPath", s("/devices/pci0000:00/0000:00:02.0")),
            ("Subsystem", s("pci")),
            ("Driver", s("i915")),
            ("Lifetime", s("persistent")),
        ]);
        let minimal = opts(&[("Id", s("a-1")), ("DeviceApi", s("vfio-ccw"))]);
        let reg = registration("0000:00:02.0", &options, &[good_type("z-9"), minimal]).unwrap();
        assert_eq!(reg.lifetime, Lifetime::Persistent);
        assert_eq!(reg.info.devpath, "/devices/pci0000:00/0000:00:02.0");
        assert_eq!(reg.info.subsystem, "pci");
        assert_eq!(reg.info.driver, "i915");
        let ids: Vec<&str> = reg.info.types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a-1", "z-9"]);
        assert_eq!(reg.info.types[0].available_instances, 0);
    }

    #[test]
    fn zero_types_are_allowed() {
        assert!(registration("p", &HashMap::new(), &[]).is_ok());
    }

    #[test]
    fn bad_names() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "a\u{0}b",
            &"x".repeat(256),
        ] {
            let message = invalid(registration(name, &HashMap::new(), &[]));
            assert!(message.contains("parent name"), "{message}");
        }
        limit(registration(&"x".repeat(4097), &HashMap::new(), &[]));
    }

    #[test]
    fn unknown_option_and_wrong_types() {
        let message = invalid(registration("p", &opts(&[("Colour", s("red"))]), &[]));
        assert!(message.contains("Colour"), "{message}");
        let message = invalid(registration(
            "p",
            &opts(&[("DevPath", OwnedVariant::from(3u32))]),
            &[],
        ));
        assert!(message.contains("type s"), "{message}");
        // A variant inside the variant is the wrong type too.
        let nested =
            OwnedVariant::try_from(Variant::Variant(Box::new(Variant::from("owner")))).unwrap();
        invalid(registration("p", &opts(&[("Lifetime", nested)]), &[]));
        invalid(registration("p", &opts(&[("Lifetime", s("forever"))]), &[]));
    }

    #[test]
    fn devpaths() {
        for good in [
            "/devices/x",
            "/devices/virtual/mdevreg/a:b.c-d_e",
            "/devices/a@b/c",
        ] {
            let reg = registration("p", &opts(&[("DevPath", s(good))]), &[]).unwrap();
            assert_eq!(reg.info.devpath, good);
        }
        for bad in [
            "",
            "/",
            "/devices",
            "/devices/",
            "devices/x",
            "/sys/devices/x",
            "/devices//x",
            "/devices/x/",
            "/devices/../etc",
            "/devices/x/./y",
            "/devices/a b",
            "/devices/a\u{0}b",
            "/devices/é",
        ] {
            invalid(registration("p", &opts(&[("DevPath", s(bad))]), &[]));
        }
        let at_bound = format!("/devices/{}", "x".repeat(503));
        assert!(registration("p", &opts(&[("DevPath", s(&at_bound))]), &[]).is_ok());
        let long = format!("/devices/{}", "x".repeat(504));
        invalid(registration("p", &opts(&[("DevPath", s(&long))]), &[]));
        let huge = format!("/devices/{}", "x".repeat(5000));
        limit(registration("p", &opts(&[("DevPath", s(&huge))]), &[]));
    }

    #[test]
    fn subsystem_and_driver() {
        invalid(registration("p", &opts(&[("Subsystem", s(""))]), &[]));
        invalid(registration("p", &opts(&[("Subsystem", s("a/b"))]), &[]));
        invalid(registration("p", &opts(&[("Driver", s("x y"))]), &[]));
        invalid(registration(
            "p",
            &opts(&[("Driver", s(&"d".repeat(256)))]),
            &[],
        ));
        let reg = registration("p", &opts(&[("Driver", s(""))]), &[]).unwrap();
        assert_eq!(reg.info.driver, "");
    }

    #[test]
    fn type_entries() {
        let mut no_id = good_type("x");
        no_id.remove("Id");
        assert!(invalid(registration("p", &HashMap::new(), &[no_id])).contains("Id is required"));
        let mut no_api = good_type("x");
        no_api.remove("DeviceApi");
        assert!(invalid(registration("p", &HashMap::new(), &[no_api]))
            .contains("DeviceApi is required"));
        let mut unknown = good_type("x");
        unknown.insert("Colour".into(), s("red"));
        assert!(invalid(registration("p", &HashMap::new(), &[unknown])).contains("Colour"));
        let mut signed = good_type("x");
        signed.insert("AvailableInstances".into(), OwnedVariant::from(4i32));
        assert!(invalid(registration("p", &HashMap::new(), &[signed])).contains("type u"));
        let mut bad_id = good_type("x");
        bad_id.insert("Id".into(), s("../x"));
        invalid(registration("p", &HashMap::new(), &[bad_id]));
        let message = invalid(registration(
            "p",
            &HashMap::new(),
            &[good_type("a"), good_type("a")],
        ));
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn bounds() {
        let mut long_description = good_type("x");
        long_description.insert("Description".into(), s(&"d".repeat(4097)));
        limit(registration("p", &HashMap::new(), &[long_description]));
        let mut at_bound = good_type("x");
        at_bound.insert("Description".into(), s(&"d".repeat(4096)));
        assert!(registration("p", &HashMap::new(), &[at_bound]).is_ok());

        let many: Vec<_> = (0..1025).map(|i| good_type(&format!("t-{i}"))).collect();
        limit(registration("p", &HashMap::new(), &many));
        assert_eq!(
            registration("p", &HashMap::new(), &many[..1024])
                .unwrap()
                .info
                .types
                .len(),
            1024
        );
    }

    #[test]
    fn violations_map_to_dbus_errors() {
        assert_eq!(
            Error::from(Violation::Invalid("x".into())).kind(),
            "InvalidArgument"
        );
        assert_eq!(
            Error::from(Violation::Limit("x".into())).kind(),
            "LimitExceeded"
        );
    }

    #[test]
    fn quoting_is_bounded() {
        assert_eq!(quoted("ab"), "\"ab\"");
        assert!(quoted(&"x".repeat(1000)).len() < 80);
    }
}
