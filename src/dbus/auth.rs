//! Caller authorisation: mutating methods need the caller's uid to be 0, as
//! the bus reports it for the message's sender (never the daemon's own
//! credentials, never only the bus policy).

use zbus::fdo::DBusProxy;
use zbus::message::Header;

use super::errors::Error;

/// The uid allowed to call RegisterParent, UnregisterParent and Rescan.
pub const PRIVILEGED_UID: u32 = 0;

/// The unique bus name of the caller of `header`'s message.
pub fn caller(header: &Header<'_>) -> Result<String, Error> {
    header
        .sender()
        .map(|sender| sender.to_string())
        .ok_or_else(|| Error::AccessDenied("the call has no sender".to_owned()))
}

/// Decides on a caller's uid as reported by the bus.
pub fn check_uid(method: &str, caller: &str, uid: u32) -> Result<(), Error> {
    if uid == PRIVILEGED_UID {
        Ok(())
    } else {
        Err(Error::AccessDenied(format!(
            "{method} needs uid {PRIVILEGED_UID}; caller {caller} has uid {uid}"
        )))
    }
}

/// The uid of `caller` as the bus reports it.
pub async fn sender_uid(bus: &DBusProxy<'_>, caller: &str) -> zbus::Result<u32> {
    let name = zbus::names::BusName::try_from(caller)?;
    Ok(bus.get_connection_unix_user(name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_passes() {
        assert!(check_uid("RegisterParent", ":1.1", 0).is_ok());
        let err = check_uid("RegisterParent", ":1.2", 65534).unwrap_err();
        assert_eq!(err.kind(), "AccessDenied");
        assert!(err.to_string().contains("65534"), "{err}");
    }
}
