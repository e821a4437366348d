//! Caller authorisation for the mutating methods (RegisterParent,
//! UnregisterParent, Rescan), decided in one place, [`authorize`], on the
//! caller's uid as the bus reports it for the message's sender (never the
//! daemon's own credentials, never only the bus policy). Read-only methods
//! are open to every caller and never come here.

use zbus::fdo::DBusProxy;
use zbus::message::Header;

use super::errors::Error;

/// The uid that may always call the mutating methods.
pub const PRIVILEGED_UID: u32 = 0;

/// A mutating method, and the polkit action that names it (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    RegisterParent,
    UnregisterParent,
    Rescan,
}

impl Action {
    /// The D-Bus method.
    pub fn method(self) -> &'static str {
        match self {
            Action::RegisterParent => "RegisterParent",
            Action::UnregisterParent => "UnregisterParent",
            Action::Rescan => "Rescan",
        }
    }

    /// The polkit action id.
    pub fn polkit_action(self) -> &'static str {
        match self {
            Action::RegisterParent => "org.mdevreg.register-parent",
            Action::UnregisterParent => "org.mdevreg.unregister-parent",
            Action::Rescan => "org.mdevreg.rescan",
        }
    }
}

/// Who besides uid 0 may call the mutating methods, fixed at startup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// The daemon's own uid, trusted when the daemon runs on a bus of its
    /// user (`--bus embedded` or `--bus session`); `None` on the system bus
    /// or a bus given by address.
    pub own_uid: Option<u32>,
}

impl AuthPolicy {
    /// The policy of a daemon running as `euid`, on a bus of its own user
    /// (`own_bus`: embedded or session) or not.
    pub fn new(own_bus: bool, euid: u32) -> AuthPolicy {
        AuthPolicy {
            own_uid: own_bus.then_some(euid),
        }
    }
}

/// The sender of a mutating call.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// Unique bus name.
    pub name: &'a str,
    /// Uid as the bus reports it.
    pub uid: u32,
}

/// Decides whether `caller` may do `action`: uid 0 may; the daemon's own
/// uid may on a bus of its own user ([`AuthPolicy::own_uid`]); anyone else
/// gets `AccessDenied` (polkit is to be asked here).
pub async fn authorize(
    policy: &AuthPolicy,
    action: Action,
    caller: Caller<'_>,
) -> Result<(), Error> {
    if caller.uid == PRIVILEGED_UID || policy.own_uid == Some(caller.uid) {
        return Ok(());
    }
    let allowed = match policy.own_uid {
        Some(own) => format!("uid {PRIVILEGED_UID} or {own}"),
        None => format!("uid {PRIVILEGED_UID}"),
    };
    Err(Error::AccessDenied(format!(
        "{} needs {allowed}; caller {} has uid {}",
        action.method(),
        caller.name,
        caller.uid
    )))
}

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

    fn decide(policy: AuthPolicy, uid: u32) -> Result<(), Error> {
        let caller = Caller { name: ":1.2", uid };
        futures_util::FutureExt::now_or_never(authorize(&policy, Action::RegisterParent, caller))
            .expect("decided without waiting")
    }

    #[test]
    fn root_always_passes() {
        assert!(decide(AuthPolicy::new(false, 0), 0).is_ok());
        assert!(decide(AuthPolicy::new(true, 1000), 0).is_ok());
    }

    #[test]
    fn own_uid_passes_only_on_its_own_bus() {
        assert!(decide(AuthPolicy::new(true, 1000), 1000).is_ok());
        let err = decide(AuthPolicy::new(false, 1000), 1000).unwrap_err();
        assert_eq!(err.kind(), "AccessDenied");
        let err = decide(AuthPolicy::new(true, 1000), 65534).unwrap_err();
        assert_eq!(err.kind(), "AccessDenied");
        assert!(err.to_string().contains("65534"), "{err}");
        assert!(err.to_string().contains("RegisterParent"), "{err}");
    }

    #[test]
    fn actions_name_their_polkit_ids() {
        assert_eq!(Action::Rescan.polkit_action(), "org.mdevreg.rescan");
        assert_eq!(Action::UnregisterParent.method(), "UnregisterParent");
    }
}
