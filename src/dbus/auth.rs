//! Caller authorisation for the mutating methods (RegisterParent,
//! UnregisterParent, Rescan), decided in one place, [`authorize`], on the
//! caller's uid as the bus reports it for the message's sender (never the
//! daemon's own credentials, never a value from the message, never only the
//! bus policy): uid 0 may; the daemon's own uid may on a bus of its own
//! user; anyone else may if polkit authorises the caller's bus name for the
//! method's action, with the parent name as a detail. Without polkitd on
//! the bus, only those two. Read-only methods are open to every caller and
//! never come here.

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::Connection;

use super::errors::Error;
use super::polkit::{self, Outcome};
use super::validate::quoted;

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
    /// Every action, as `packaging/polkit/org.mdevreg.Registry1.policy`
    /// declares them.
    pub const ALL: [Action; 3] = [
        Action::RegisterParent,
        Action::UnregisterParent,
        Action::Rescan,
    ];

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

    /// Whether `uid` may mutate without asking polkit.
    pub fn trusts(&self, uid: u32) -> bool {
        uid == PRIVILEGED_UID || self.own_uid == Some(uid)
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

/// What a mutating call asks for.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub action: Action,
    /// The parent it is about (empty for Rescan), passed to polkit as the
    /// detail `parent`.
    pub parent: &'a str,
    /// The caller lets polkit ask it to authenticate (`AllowInteraction`).
    pub allow_interaction: bool,
}

impl<'a> Ask<'a> {
    /// `action` on `parent`, without interaction.
    pub fn new(action: Action, parent: &'a str) -> Ask<'a> {
        Ask {
            action,
            parent,
            allow_interaction: false,
        }
    }
}

/// Decides whether `caller` may do `ask`: uid 0 may; the daemon's own uid
/// may on a bus of its own user ([`AuthPolicy::own_uid`]); anyone else if
/// polkit on `polkit`'s bus says so (`None`: not asked, denied).
pub async fn authorize(
    policy: &AuthPolicy,
    polkit: Option<&Connection>,
    ask: Ask<'_>,
    caller: Caller<'_>,
) -> Result<(), Error> {
    if policy.trusts(caller.uid) {
        return Ok(());
    }
    let outcome = match polkit {
        Some(connection) => {
            polkit::check(
                connection,
                caller.name,
                ask.action,
                ask.parent,
                ask.allow_interaction,
            )
            .await
        }
        None => Outcome::Unavailable("not asked".to_owned()),
    };
    verdict(policy, ask, caller, outcome)
}

/// The answer to `caller` once polkit said `outcome` (pure).
pub fn verdict(
    policy: &AuthPolicy,
    ask: Ask<'_>,
    caller: Caller<'_>,
    outcome: Outcome,
) -> Result<(), Error> {
    let action = ask.action;
    let what = if ask.parent.is_empty() {
        action.method().to_owned()
    } else {
        format!("{} {}", action.method(), quoted(ask.parent))
    };
    let who = format!("caller {} (uid {})", caller.name, caller.uid);
    let trusted = match policy.own_uid {
        Some(own) => format!("uid {PRIVILEGED_UID} or {own}"),
        None => format!("uid {PRIVILEGED_UID}"),
    };
    match outcome {
        Outcome::Authorized => Ok(()),
        Outcome::NotAuthorized { challenge } => Err(Error::AccessDenied(format!(
            "{what}: polkit did not authorise {who} for {}{}",
            action.polkit_action(),
            if challenge {
                " (it would after authentication: set AllowInteraction)"
            } else {
                ""
            }
        ))),
        Outcome::Unavailable(why) => Err(Error::AccessDenied(format!(
            "{what} needs {trusted} or polkit, and polkit is missing \
             ({} is not on the bus: {why}); {who} is neither",
            polkit::POLKIT_BUS_NAME
        ))),
        Outcome::Failed(why) => Err(Error::AccessDenied(format!(
            "{what}: polkit could not decide for {who}: {why}"
        ))),
    }
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
        let ask = Ask::new(Action::RegisterParent, "p");
        futures_util::FutureExt::now_or_never(authorize(&policy, None, ask, caller))
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
        assert!(err.to_string().contains("uid 0 or 1000"), "{err}");
    }

    #[test]
    fn actions_name_their_polkit_ids() {
        assert_eq!(Action::Rescan.polkit_action(), "org.mdevreg.rescan");
        assert_eq!(Action::UnregisterParent.method(), "UnregisterParent");
    }

    #[test]
    fn polkit_outcomes_become_replies() {
        let policy = AuthPolicy::new(false, 0);
        let nobody = Caller {
            name: ":1.7",
            uid: 65534,
        };
        let ask = Ask::new(Action::RegisterParent, "p");
        assert!(verdict(&policy, ask, nobody, Outcome::Authorized).is_ok());
        let denied = verdict(
            &policy,
            ask,
            nobody,
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
            &policy,
            ask,
            nobody,
            Outcome::Unavailable("no owner".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("polkit is missing") && missing.contains("65534"),
            "{missing}"
        );
        let rescan = Ask::new(Action::Rescan, "");
        let failed = verdict(&policy, rescan, nobody, Outcome::Failed("boom".into()))
            .unwrap_err()
            .to_string();
        assert!(
            failed.contains("Rescan: polkit could not decide"),
            "{failed}"
        );
    }
}
