//! The typed D-Bus errors of `org.mdevreg.Registry1` (SPEC §2), shared by the
//! daemon (replies) and the generated client proxies (which map a reply's
//! error name back to the variant).

use crate::registry;

/// Error replies of every mdevreg interface:
/// `org.mdevreg.Registry1.Error.<Variant>`, with a human-readable message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.mdevreg.Registry1.Error")]
pub enum Error {
    /// A transport or protocol error, or an error name this crate does not
    /// define (`org.freedesktop.DBus.Error.*` included).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The name is held by another parent (kernel or userspace).
    AlreadyRegistered(String),
    /// No parent of that name.
    NotRegistered(String),
    /// A malformed argument: bad name, unknown key, wrong variant type,
    /// missing required key, duplicate type id.
    InvalidArgument(String),
    /// The caller is not allowed to call this method (uid is not 0).
    AccessDenied(String),
    /// The caller may not unregister this parent (a kernel parent, or an
    /// owner-bound parent of another connection).
    NotOwner(String),
    /// A bound of SPEC §3 is exceeded (string length, types per parent,
    /// parents per owner).
    LimitExceeded(String),
}

impl Error {
    /// Short name of the variant (the last part of the D-Bus error name).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ZBus(_) => "ZBus",
            Error::AlreadyRegistered(_) => "AlreadyRegistered",
            Error::NotRegistered(_) => "NotRegistered",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::AccessDenied(_) => "AccessDenied",
            Error::NotOwner(_) => "NotOwner",
            Error::LimitExceeded(_) => "LimitExceeded",
        }
    }

    /// An internal failure (the daemon is shutting down, say). zbus replies
    /// with its generic `org.freedesktop.zbus.Error` name and this message.
    pub fn failed(message: impl Into<String>) -> Error {
        Error::ZBus(zbus::Error::Failure(message.into()))
    }
}

impl From<registry::Error> for Error {
    fn from(err: registry::Error) -> Error {
        let message = err.to_string();
        match err {
            registry::Error::AlreadyRegistered(_) => Error::AlreadyRegistered(message),
            registry::Error::NotRegistered(_) => Error::NotRegistered(message),
            registry::Error::NotOwner(_) => Error::NotOwner(message),
            registry::Error::LimitExceeded(_) | registry::Error::UidLimitExceeded(_) => {
                Error::LimitExceeded(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use zbus::DBusError;

    use super::*;

    #[test]
    fn error_names_follow_the_spec() {
        let cases = [
            (Error::AlreadyRegistered(String::new()), "AlreadyRegistered"),
            (Error::NotRegistered(String::new()), "NotRegistered"),
            (Error::InvalidArgument(String::new()), "InvalidArgument"),
            (Error::AccessDenied(String::new()), "AccessDenied"),
            (Error::NotOwner(String::new()), "NotOwner"),
            (Error::LimitExceeded(String::new()), "LimitExceeded"),
        ];
        for (error, kind) in cases {
            assert_eq!(
                error.name().as_str(),
                format!("org.mdevreg.Registry1.Error.{kind}")
            );
            assert_eq!(error.kind(), kind);
        }
    }

    #[test]
    fn registry_errors_map_to_their_names() {
        let err = Error::from(registry::Error::NotOwner("p".into()));
        assert!(matches!(err, Error::NotOwner(ref m) if m.contains("\"p\"")));
        let err = Error::from(registry::Error::LimitExceeded(":1.5".into()));
        assert_eq!(err.kind(), "LimitExceeded");
    }

    #[test]
    fn failed_keeps_its_message() {
        let err = Error::failed("shutting down");
        assert_eq!(err.kind(), "ZBus");
        assert!(err.to_string().contains("shutting down"), "{err}");
    }
}
