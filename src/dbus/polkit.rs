//! The polkit client: asks `org.freedesktop.PolicyKit1.Authority` whether a
//! caller (subject `system-bus-name`, its unique bus name) may do one of
//! mdevreg's [`Action`]s, with the parent name as the detail `parent` so
//! rules can grant per parent (`action.lookup("parent")`). A plain zbus
//! proxy; the answer is an [`Outcome`], polkit missing from the bus is told
//! apart from a refusal.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;
use zbus::Connection;

pub use super::auth::Action;
use zbus::Variant;

/// Well-known name of polkitd.
pub const POLKIT_BUS_NAME: &str = "org.freedesktop.PolicyKit1";
/// The detail carrying the parent name (empty for `Rescan`).
pub const PARENT_DETAIL: &str = "parent";
/// `CheckAuthorization` flag: polkit may ask the user to authenticate.
const ALLOW_USER_INTERACTION: u32 = 1;

/// polkit's subject: `(sa{sv})`.
#[derive(Debug, Serialize, Type)]
struct Subject<'a> {
    kind: &'a str,
    details: HashMap<&'a str, Variant<'a>>,
}

/// polkit's answer: `(bba{ss})`.
#[derive(Debug, Deserialize, Type)]
struct AuthorizationResult {
    is_authorized: bool,
    is_challenge: bool,
    #[allow(dead_code)]
    details: HashMap<String, String>,
}

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    fn check_authorization(
        &self,
        subject: &Subject<'_>,
        action_id: &str,
        details: &HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<AuthorizationResult>;
}

/// What polkit said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Authorized,
    /// Refused; `challenge`: it would have been allowed after
    /// authenticating (the caller did not set `AllowInteraction`).
    NotAuthorized {
        challenge: bool,
    },
    /// polkitd is not on the bus (or cannot be started).
    Unavailable(String),
    /// polkitd answered with an error.
    Failed(String),
}

/// Error names meaning nobody serves polkit on this bus.
const UNAVAILABLE_ERRORS: [&str; 4] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.NoReply",
];

/// The D-Bus error name of an error reply (zbus maps the standard ones to
/// `fdo::Error`).
fn error_name(err: &zbus::Error) -> Option<String> {
    match err {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            Some(fdo.name().to_string())
        }
        _ => None,
    }
}

/// Asks polkit whether the connection `caller` (a unique bus name) may do
/// `action` on `parent`.
pub async fn check(
    connection: &Connection,
    caller: &str,
    action: Action,
    parent: &str,
    allow_interaction: bool,
) -> Outcome {
    let proxy = match AuthorityProxy::builder(connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
    {
        Ok(proxy) => proxy,
        Err(err) => return Outcome::Failed(err.to_string()),
    };
    let subject = Subject {
        kind: "system-bus-name",
        details: HashMap::from([("name", Variant::from(caller))]),
    };
    let details = HashMap::from([(PARENT_DETAIL, parent)]);
    let flags = if allow_interaction {
        ALLOW_USER_INTERACTION
    } else {
        0
    };
    match proxy
        .check_authorization(&subject, action.polkit_action(), &details, flags, "")
        .await
    {
        Ok(result) if result.is_authorized => Outcome::Authorized,
        Ok(result) => Outcome::NotAuthorized {
            challenge: result.is_challenge,
        },
        Err(err) => match error_name(&err) {
            Some(name) if UNAVAILABLE_ERRORS.contains(&name.as_str()) => {
                Outcome::Unavailable(err.to_string())
            }
            _ => Outcome::Failed(err.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_signatures_are_polkits() {
        assert_eq!(Subject::SIGNATURE.to_string(), "(sa{sv})");
        assert_eq!(AuthorizationResult::SIGNATURE.to_string(), "(bba{ss})");
    }

    #[test]
    fn the_shipped_policy_declares_every_action() {
        let policy = include_str!("../../packaging/polkit/org.mdevreg.Registry1.policy");
        for action in Action::ALL {
            let start = policy
                .find(&format!("<action id=\"{}\">", action.polkit_action()))
                .unwrap_or_else(|| panic!("{} missing from the policy", action.polkit_action()));
            let end = start + policy[start..].find("</action>").expect("</action>");
            let body = &policy[start..end];
            for default in ["allow_any", "allow_inactive", "allow_active"] {
                assert!(
                    body.contains(&format!("<{default}>auth_admin</{default}>")),
                    "{}: {default} is not auth_admin",
                    action.polkit_action()
                );
            }
            assert!(body.contains("<message>") && body.contains("<description>"));
        }
    }
}
