//! Caller authorisation: a mutating method is allowed when the caller's uid
//! (as the bus reports it for the message's sender: never the daemon's own
//! credentials, never a value from the message, never only the bus policy)
//! is 0, or when polkit authorises the caller's bus name for the method's
//! action ([`authorize`]). Without polkitd on the bus, only root.

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::Connection;

use super::errors::Error;
use super::polkit::{self, Action, Outcome};
use super::validate::quoted;

/// The caller of a method, as the bus reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Unique bus name.
    pub name: String,
    pub uid: u32,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == PRIVILEGED_UID
    }
}

/// Decides whether `caller` may call `action`'s method on `parent` (empty
/// for Rescan): root always; anyone else if polkit says so (with user
/// interaction only if the caller allowed it).
pub async fn authorize(
    connection: &Connection,
    caller: &Caller,
    action: Action,
    parent: &str,
    allow_interaction: bool,
) -> Result<(), Error> {
    if caller.is_root() {
        return Ok(());
    }
    let outcome = polkit::check(connection, &caller.name, action, parent, allow_interaction).await;
    verdict(caller, action, parent, outcome)
}

/// The reply for polkit's `outcome` (pure, for tests).
pub fn verdict(
    caller: &Caller,
    action: Action,
    parent: &str,
    outcome: Outcome,
) -> Result<(), Error> {
    let what = if parent.is_empty() {
        action.method().to_owned()
    } else {
        format!("{} {}", action.method(), quoted(parent))
    };
    let who = format!("caller {} (uid {})", caller.name, caller.uid);
    match outcome {
        Outcome::Authorized => Ok(()),
        Outcome::NotAuthorized { challenge } => Err(Error::AccessDenied(format!(
            "{what}: polkit did not authorise {who} for {}{}",
            action.id(),
            if challenge {
                " (it would after authentication: set AllowInteraction)"
            } else {
                ""
            }
        ))),
        Outcome::Unavailable(why) => Err(Error::AccessDenied(format!(
            "{what} needs uid {PRIVILEGED_UID} or polkit, and polkit is missing \
             ({} is not on the bus: {why}); {who} is not root",
            polkit::POLKIT_BUS_NAME
        ))),
        Outcome::Failed(why) => Err(Error::AccessDenied(format!(
            "{what}: polkit could not decide for {who}: {why}"
        ))),
    }
}

/// The uid allowed to call RegisterParent, UnregisterParent and Rescan.
pub const PRIVILEGED_UID: u32 = 0;

/// The unique bus name of the caller of `header`'s message.
pub fn caller(header: &Header<'_>) -> Result<String, Error> {
    header
        .sender()
        .map(|sender| sender.to_string())
        .ok_or_else(|| Error::AccessDenied("the call has no sender".to_owned()))
}

/// The uid of `caller` as the bus reports it.
pub async fn sender_uid(bus: &DBusProxy<'_>, caller: &str) -> zbus::Result<u32> {
    let name = zbus::names::BusName::try_from(caller)?;
    Ok(bus.get_connection_unix_user(name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Caller {
        Caller {
            name: ":1.7".into(),
            uid: 65534,
        }
    }

    #[test]
    fn polkit_outcomes_become_replies() {
        let action = Action::RegisterParent;
        assert!(verdict(&nobody(), action, "p", Outcome::Authorized).is_ok());
        let denied = verdict(
            &nobody(),
            action,
            "p",
            Outcome::NotAuthorized { challenge: true },
        )
        .unwrap_err();
        assert_eq!(denied.kind(), "AccessDenied");
        let text = denied.to_string();
        assert!(
            text.contains("org.mdevreg.register-parent") && text.contains("AllowInteraction"),
            "{text}"
        );
        let missing = verdict(
            &nobody(),
            action,
            "p",
            Outcome::Unavailable("no owner".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("polkit is missing") && missing.contains("65534"),
            "{missing}"
        );
        let failed = verdict(
            &nobody(),
            Action::Rescan,
            "",
            Outcome::Failed("boom".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            failed.contains("Rescan: polkit could not decide"),
            "{failed}"
        );
    }
}
