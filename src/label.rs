//! D-Bus object path labels (SPEC §2): reversible escaping of parent names and
//! type ids into single path elements, as systemd's `bus_label_escape`, and the
//! object paths built from them.

/// Well-known bus name of the daemon.
pub const BUS_NAME: &str = "org.mdevreg.Registry1";

/// Root object: ObjectManager and `org.mdevreg.Registry1`.
pub const ROOT_PATH: &str = "/org/mdevreg/Registry1";

/// Prefix of every parent object path (followed by the parent's label).
pub const PARENT_PATH_PREFIX: &str = "/org/mdevreg/Registry1/parent/";

/// Path element between a parent's label and a type's label.
const TYPE_SEGMENT: &str = "/type/";

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Escapes `raw` into a string of `[A-Za-z0-9_]` that is a valid D-Bus object
/// path element.
///
/// Letters are kept, digits are kept except in first position, every other
/// byte becomes `_xx` (two lowercase hex digits). The empty string becomes `_`.
/// Same output as systemd's `bus_label_escape`, e.g. `0000:00:02.0` gives
/// `_30000_3a00_3a02_2e0`.
pub fn escape(raw: impl AsRef<[u8]>) -> String {
    let raw = raw.as_ref();
    if raw.is_empty() {
        return "_".to_owned();
    }
    let mut label = String::with_capacity(raw.len() * 3);
    for (index, &byte) in raw.iter().enumerate() {
        let keep = byte.is_ascii_alphabetic() || (index > 0 && byte.is_ascii_digit());
        if keep {
            label.push(char::from(byte));
        } else {
            label.push('_');
            label.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            label.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
        }
    }
    label
}

/// Reverses [`escape`].
///
/// Stricter than systemd's `bus_label_unescape` (which takes a malformed
/// escape literally): only labels that [`escape`] can produce are accepted, so
/// every object path maps to at most one name. Returns `None` otherwise.
pub fn unescape(label: &str) -> Option<Vec<u8>> {
    if label == "_" {
        return Some(Vec::new());
    }
    let bytes = label.as_bytes();
    let mut raw = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'_' {
            let high = bytes.get(index + 1).copied().and_then(lower_hex_value)?;
            let low = bytes.get(index + 2).copied().and_then(lower_hex_value)?;
            raw.push((high << 4) | low);
            index += 3;
        } else {
            raw.push(byte);
            index += 1;
        }
    }
    // Canonical form only: rejects kept bytes that should have been escaped
    // (`.`, a leading digit, non-ASCII) and escapes of letters or inner digits.
    (escape(&raw) == label).then_some(raw)
}

/// [`unescape`] for labels of UTF-8 names (parent names and type ids are ASCII).
pub fn unescape_str(label: &str) -> Option<String> {
    String::from_utf8(unescape(label)?).ok()
}

fn lower_hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Object path of the parent called `name`: `/org/mdevreg/Registry1/parent/<label>`.
pub fn parent_path(name: &str) -> String {
    format!("{PARENT_PATH_PREFIX}{}", escape(name))
}

/// Object path of type `type_id` of parent `parent`:
/// `/org/mdevreg/Registry1/parent/<label>/type/<label>`.
pub fn type_path(parent: &str, type_id: &str) -> String {
    format!(
        "{PARENT_PATH_PREFIX}{}{TYPE_SEGMENT}{}",
        escape(parent),
        escape(type_id)
    )
}

/// The parent name of a parent object path, `None` if `path` is not one.
pub fn parse_parent_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(PARENT_PATH_PREFIX)?;
    if label.contains('/') {
        return None;
    }
    unescape_str(label)
}

/// The parent name and type id of a type object path, `None` if `path` is not one.
pub fn parse_type_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(PARENT_PATH_PREFIX)?;
    let (parent_label, type_label) = rest.split_once(TYPE_SEGMENT)?;
    if parent_label.contains('/') || type_label.contains('/') {
        return None;
    }
    Some((unescape_str(parent_label)?, unescape_str(type_label)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid D-Bus object path element: non-empty, only `[A-Za-z0-9_]`.
    fn is_path_element(element: &str) -> bool {
        !element.is_empty()
            && element
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    #[test]
    fn escapes_like_systemd() {
        // Expected values worked out by hand from systemd's bus_label_escape.
        assert_eq!(escape("0000:00:02.0"), "_30000_3a00_3a02_2e0");
        assert_eq!(escape(""), "_");
        assert_eq!(escape("abc"), "abc");
        assert_eq!(escape("a1"), "a1");
        assert_eq!(escape("1a"), "_31a");
        assert_eq!(escape("_"), "_5f");
        assert_eq!(escape("i915-GVTg_V5_4"), "i915_2dGVTg_5fV5_5f4");
        assert_eq!(escape("nvidia-155"), "nvidia_2d155");
        assert_eq!(escape("a.b"), "a_2eb");
        assert_eq!(escape([0xffu8, 0x00, b'Z']), "_ff_00Z");
        assert_eq!(escape("é"), "_c3_a9");
    }

    #[test]
    fn unescapes_canonical_labels() {
        assert_eq!(unescape("_"), Some(Vec::new()));
        assert_eq!(
            unescape_str("_30000_3a00_3a02_2e0").as_deref(),
            Some("0000:00:02.0")
        );
        assert_eq!(unescape("_ff_00Z"), Some(vec![0xff, 0x00, b'Z']));
    }

    #[test]
    fn rejects_non_canonical_labels() {
        for bad in [
            "", "__", "_3", "_zz", "_3A", "1a", "a.b", "_61", "a_31", "é", "a_", "a/b",
        ] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
        // Non-UTF-8 bytes are fine for unescape, not for unescape_str.
        assert_eq!(unescape_str("_ff"), None);
    }

    #[test]
    fn builds_and_parses_paths() {
        assert_eq!(
            parent_path("0000:00:02.0"),
            "/org/mdevreg/Registry1/parent/_30000_3a00_3a02_2e0"
        );
        assert_eq!(
            type_path("0000:00:02.0", "i915-GVTg_V5_4"),
            "/org/mdevreg/Registry1/parent/_30000_3a00_3a02_2e0/type/i915_2dGVTg_5fV5_5f4"
        );
        assert_eq!(
            parse_parent_path(&parent_path("mtty")).as_deref(),
            Some("mtty")
        );
        assert_eq!(
            parse_type_path(&type_path("mtty", "mtty-2")),
            Some(("mtty".to_owned(), "mtty-2".to_owned()))
        );
        assert_eq!(parse_parent_path(&type_path("mtty", "mtty-2")), None);
        assert_eq!(parse_parent_path(ROOT_PATH), None);
        assert_eq!(
            parse_type_path("/org/mdevreg/Registry1/parent/a/type/b/c"),
            None
        );
        assert!(zbus::ObjectPath::try_from(type_path("", "")).is_ok());
    }

    proptest! {
        #[test]
        fn escape_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let label = escape(&raw);
            prop_assert!(is_path_element(&label), "{label:?}");
            prop_assert_eq!(unescape(&label), Some(raw));
        }

        #[test]
        fn paths_are_valid_object_paths(parent in ".{0,20}", type_id in ".{0,20}") {
            let path = type_path(&parent, &type_id);
            prop_assert!(zbus::ObjectPath::try_from(path.as_str()).is_ok());
            prop_assert_eq!(parse_type_path(&path), Some((parent.clone(), type_id)));
            prop_assert_eq!(parse_parent_path(&parent_path(&parent)), Some(parent));
        }

        #[test]
        fn unescape_never_panics(label in "[_a-z0-9A-Z./]{0,12}") {
            if let Some(raw) = unescape(&label) {
                prop_assert_eq!(escape(raw), label);
            }
        }
    }
}
