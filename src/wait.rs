//! `mdevreg wait PARENT [--type ID] [--available N] [--timeout S]`: returns
//! as soon as a parent is registered (with that type, with at least N
//! available instances). The [`Condition`] is pure; two watchers feed it:
//! - over D-Bus ([`wait_dbus`]): subscribe to the registry's signals and to
//!   the daemon's name first, then ask the daemon, and ask again on each
//!   signal about the parent (ParentRegistered, InterfacesAdded,
//!   PropertiesChanged below its object) or when the daemon (re)starts;
//! - on a sysfs root with no daemon ([`wait_sysfs`]): open the kernel
//!   uevent listener first, then read the parent from sysfs, and read it
//!   again on each kernel uevent (or receive-buffer overflow).
//!
//! Subscribing before the first check means no transition can be missed;
//! signals and uevents are only wake-ups (the state is always read again),
//! so nothing is polled and a forged signal cannot make it return early.

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use zbus::fdo::DBusProxy;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use crate::client::{describe_zbus, is_no_daemon_error, BusTarget, ClientError};
use crate::dbus::{Error as RegistryError, Registry1Proxy};
use crate::label;
use crate::model::{Parent, ParentInfo};
use crate::netlink::{RecvOutcome, UeventListener};
use crate::paths::SysfsRoot;
use crate::sysfs::{self, ParentRead};

/// What `wait` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub parent: String,
    /// The parent must have this type.
    pub type_id: Option<String>,
    /// That type (or, without `type_id`, some type) must have at least
    /// this many available instances.
    pub available: Option<u32>,
}

/// What is still missing; shown as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    Parent {
        parent: String,
        /// Why it is not known, when not simply absent (no daemon, say).
        why: Option<String>,
    },
    Type {
        parent: String,
        type_id: String,
    },
    Available {
        parent: String,
        type_id: Option<String>,
        /// The most available instances seen (of that type, or any type).
        have: u32,
        want: u32,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Parent { parent, why: None } => write!(f, "parent {parent} is not registered"),
            Missing::Parent {
                parent,
                why: Some(why),
            } => write!(f, "parent {parent} is not registered ({why})"),
            Missing::Type { parent, type_id } => {
                write!(f, "parent {parent} has no type {type_id}")
            }
            Missing::Available {
                parent,
                type_id: Some(type_id),
                have,
                want,
            } => write!(
                f,
                "type {type_id} of parent {parent} has {have} available instances, not {want}"
            ),
            Missing::Available {
                parent,
                type_id: None,
                have,
                want,
            } => write!(
                f,
                "no type of parent {parent} has {want} available instances (at most {have})"
            ),
        }
    }
}

impl Condition {
    /// Whether `parent` (the parent named [`Condition::parent`], `None` if
    /// it is not registered) meets the condition.
    pub fn check(&self, parent: Option<&ParentInfo>) -> Result<(), Missing> {
        let Some(info) = parent else {
            return Err(Missing::Parent {
                parent: self.parent.clone(),
                why: None,
            });
        };
        let have = match &self.type_id {
            Some(type_id) => match info.get_type(type_id) {
                Some(mdev_type) => mdev_type.available_instances,
                None => {
                    return Err(Missing::Type {
                        parent: self.parent.clone(),
                        type_id: type_id.clone(),
                    })
                }
            },
            None => info
                .types
                .iter()
                .map(|t| t.available_instances)
                .max()
                .unwrap_or(0),
        };
        match self.available {
            Some(want) if have < want => Err(Missing::Available {
                parent: self.parent.clone(),
                type_id: self.type_id.clone(),
                have,
                want,
            }),
            _ => Ok(()),
        }
    }
}

/// The failure when `timeout` passed with `missing` still missing.
fn timed_out(timeout: Duration, missing: &Missing) -> ClientError {
    ClientError::Runtime(format!(
        "timed out after {}: {missing}",
        describe_duration(timeout)
    ))
}

fn describe_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds.fract() == 0.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{seconds} s")
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Says once, on stderr, what is awaited (so logs show why a unit waits).
fn announce(err: &mut dyn Write, announced: &mut bool, missing: &Missing) {
    if !*announced {
        *announced = true;
        let _ = writeln!(err, "mdevreg: waiting: {missing}");
        let _ = err.flush();
    }
}

/// Waits over D-Bus (see the module doc).
pub async fn wait_dbus(
    target: &BusTarget,
    condition: &Condition,
    timeout: Option<Duration>,
    err: &mut dyn Write,
) -> Result<(), ClientError> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let conn = target.connect().await?;
    let failed = |e: zbus::Error| ClientError::Runtime(describe_zbus(&e));
    // Subscribed before the first check.
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .path_namespace(label::ROOT_PATH)
        .build()
        .map_err(failed)?;
    let mut signals = MessageStream::for_match_rule(rule, &conn, None)
        .await
        .map_err(failed)?;
    let bus = DBusProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(failed)?;
    let mut owners = bus
        .receive_name_owner_changed_with_args(&[(0, label::BUS_NAME)])
        .await
        .map_err(failed)?;
    let registry = Registry1Proxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(failed)?;
    let parent_path = label::parent_path(&condition.parent);
    let mut announced = false;
    loop {
        let missing = match fetch_parent(&registry, &condition.parent).await? {
            Fetched::Parent(info) => match condition.check(info.as_ref()) {
                Ok(()) => return Ok(()),
                Err(missing) => missing,
            },
            Fetched::NoDaemon => Missing::Parent {
                parent: condition.parent.clone(),
                why: Some("mdevregd is not running".to_owned()),
            },
        };
        announce(err, &mut announced, &missing);
        // Sleep until something about the parent (or the daemon) happens.
        loop {
            tokio::select! {
                () = until(deadline) => {
                    return Err(timed_out(timeout.unwrap_or_default(), &missing));
                }
                message = signals.next() => match message {
                    Some(Ok(message)) => {
                        if is_about(&message, &condition.parent, &parent_path) {
                            break;
                        }
                    }
                    Some(Err(_)) => {}
                    None => {
                        return Err(ClientError::Runtime(format!(
                            "lost the connection to {}",
                            target.describe()
                        )))
                    }
                },
                Some(_) = owners.next() => break,
            }
        }
    }
}

/// Whether a registry signal may change the answer for `parent`.
fn is_about(message: &Message, parent: &str, parent_path: &str) -> bool {
    let header = message.header();
    let (Some(path), Some(member)) = (header.path(), header.member()) else {
        return false;
    };
    let path = path.as_str();
    match member.as_str() {
        "ParentRegistered" if path == label::ROOT_PATH => message
            .body()
            .deserialize::<(OwnedObjectPath, String, String, u64)>()
            .is_ok_and(|(_, name, _, _)| name == parent),
        "InterfacesAdded" if path == label::ROOT_PATH => message
            .body()
            .deserialize::<(
                OwnedObjectPath,
                std::collections::HashMap<String, OwnedVariant>,
            )>()
            .map(|(object, _)| is_same_or_below(object.as_str(), parent_path))
            // Unreadable: ask again rather than miss it.
            .unwrap_or(true),
        "PropertiesChanged" => is_same_or_below(path, parent_path),
        _ => false,
    }
}

fn is_same_or_below(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One parent as the daemon has it.
enum Fetched {
    /// `None`: not registered.
    Parent(Option<ParentInfo>),
    /// Nobody owns the daemon's name (yet).
    NoDaemon,
}

/// Asks the daemon for `name` (`DumpParentsByFileDescriptor`).
async fn fetch_parent(registry: &Registry1Proxy<'_>, name: &str) -> Result<Fetched, ClientError> {
    let fd = match registry.dump_parents_by_file_descriptor(name).await {
        Ok(fd) => fd,
        Err(RegistryError::ZBus(err)) if is_no_daemon_error(&err) => return Ok(Fetched::NoDaemon),
        Err(RegistryError::ZBus(err)) => return Err(ClientError::Runtime(describe_zbus(&err))),
        Err(err) => return Err(ClientError::Runtime(err.to_string())),
    };
    let mut document = Vec::new();
    std::fs::File::from(std::os::fd::OwnedFd::from(fd))
        .read_to_end(&mut document)
        .map_err(|e| ClientError::Runtime(format!("cannot read the parents document: {e}")))?;
    let parents: Vec<Parent> = serde_json::from_slice(&document).map_err(|e| {
        ClientError::Runtime(format!("unexpected parents document from mdevregd: {e}"))
    })?;
    Ok(Fetched::Parent(
        parents
            .into_iter()
            .find(|parent| parent.info.name == name)
            .map(|parent| parent.info),
    ))
}

/// Waits on a sysfs root with no daemon (see the module doc).
pub async fn wait_sysfs(
    root: &SysfsRoot,
    condition: &Condition,
    timeout: Option<Duration>,
    err: &mut dyn Write,
) -> Result<(), ClientError> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    // Listening before the first read.
    let mut listener = UeventListener::open()
        .map_err(|e| ClientError::Runtime(format!("cannot listen for kernel uevents: {e}")))?;
    let mut announced = false;
    loop {
        let missing = match sysfs::read_parent_by_name(root, &condition.parent) {
            ParentRead::Parent(info, _) => match condition.check(Some(&info)) {
                Ok(()) => return Ok(()),
                Err(missing) => missing,
            },
            ParentRead::NotAParent => match condition.check(None) {
                Ok(()) => return Ok(()),
                Err(missing) => missing,
            },
            ParentRead::Bad(warning) => Missing::Parent {
                parent: condition.parent.clone(),
                why: Some(warning.to_string()),
            },
        };
        announce(err, &mut announced, &missing);
        loop {
            tokio::select! {
                () = until(deadline) => {
                    return Err(timed_out(timeout.unwrap_or_default(), &missing));
                }
                outcome = listener.recv() => match outcome {
                    Ok(RecvOutcome::Event(_)) | Ok(RecvOutcome::Overflow) => break,
                    Ok(RecvOutcome::Rejected(_)) => {}
                    Err(e) => {
                        return Err(ClientError::Runtime(format!(
                            "kernel uevent listener: {e}"
                        )))
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MdevType;

    fn info(types: &[(&str, u32)]) -> ParentInfo {
        ParentInfo {
            name: "p".into(),
            devpath: "/devices/virtual/mdevreg/p".into(),
            subsystem: "mdevreg".into(),
            driver: String::new(),
            types: types
                .iter()
                .map(|(id, available)| MdevType {
                    id: (*id).into(),
                    device_api: "vfio-pci".into(),
                    available_instances: *available,
                    ..MdevType::default()
                })
                .collect(),
            ..ParentInfo::default()
        }
    }

    fn condition(type_id: Option<&str>, available: Option<u32>) -> Condition {
        Condition {
            parent: "p".into(),
            type_id: type_id.map(str::to_owned),
            available,
        }
    }

    #[test]
    fn parent_type_and_availability() {
        let two = info(&[("t-1", 0), ("t-2", 2)]);
        assert!(condition(None, None).check(Some(&two)).is_ok());
        assert!(condition(Some("t-1"), None).check(Some(&two)).is_ok());
        assert!(condition(Some("t-2"), Some(2)).check(Some(&two)).is_ok());
        assert!(condition(None, Some(2)).check(Some(&two)).is_ok());
        assert_eq!(
            condition(None, None).check(None).unwrap_err().to_string(),
            "parent p is not registered"
        );
        assert_eq!(
            condition(Some("t-9"), None)
                .check(Some(&two))
                .unwrap_err()
                .to_string(),
            "parent p has no type t-9"
        );
        assert_eq!(
            condition(Some("t-1"), Some(2))
                .check(Some(&two))
                .unwrap_err()
                .to_string(),
            "type t-1 of parent p has 0 available instances, not 2"
        );
        assert_eq!(
            condition(None, Some(3))
                .check(Some(&two))
                .unwrap_err()
                .to_string(),
            "no type of parent p has 3 available instances (at most 2)"
        );
        // No types at all, and 0 wanted: registered is enough.
        assert!(condition(None, Some(0)).check(Some(&info(&[]))).is_ok());
    }

    #[test]
    fn timeouts_read_well() {
        let missing = condition(None, None).check(None).unwrap_err();
        assert_eq!(
            timed_out(Duration::from_secs(5), &missing).to_string(),
            "timed out after 5 s: parent p is not registered"
        );
        assert_eq!(
            timed_out(Duration::from_millis(1500), &missing).to_string(),
            "timed out after 1.5 s: parent p is not registered"
        );
    }

    #[test]
    fn paths_below_the_parent() {
        let parent = label::parent_path("p");
        assert!(is_same_or_below(&parent, &parent));
        assert!(is_same_or_below(&format!("{parent}/type/t_2d1"), &parent));
        assert!(!is_same_or_below(&format!("{parent}2"), &parent));
    }
}
