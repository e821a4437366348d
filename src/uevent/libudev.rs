//! The libudev netlink format (group 2), as systemd's `device-monitor.c`
//! sends and receives it: a 40-byte header followed by `KEY=VALUE\0`
//! properties. Receivers (`sd_device_monitor`, libudev, `udevadm monitor
//! --udev`) build a device from the properties and drop it unless it has
//! ACTION (one they know), DEVPATH, SUBSYSTEM and a non-zero SEQNUM; the
//! encoder refuses events that would be dropped.

use super::{
    check_action, check_devpath, check_env, decode_env, put_env, string_hash32, tag_bloom64,
    DecodeError, EncodeError, Invalid, Uevent,
};

/// First 8 bytes of every libudev message.
pub const LIBUDEV_PREFIX: &[u8; 8] = b"libudev\0";
/// The header magic, stored big-endian.
pub const LIBUDEV_MAGIC: u32 = 0xfeed_cafe;
/// Size of `struct monitor_netlink_header`.
pub const LIBUDEV_HEADER_BYTES: usize = 40;
/// Actions `sd-device` accepts (`device_action_from_string`).
pub const LIBUDEV_ACTIONS: [&str; 8] = [
    "add", "remove", "change", "move", "online", "offline", "bind", "unbind",
];

/// The header fields after the prefix and magic. Sizes and offsets are in host
/// order, hashes as numbers (they are stored big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibudevHeader {
    pub header_size: u32,
    pub properties_off: u32,
    pub properties_len: u32,
    pub subsystem_hash: u32,
    pub devtype_hash: u32,
    pub tag_bloom: u64,
}

/// Encodes `event` as a libudev message with `tags` in `TAGS=:a:b:` and in the
/// bloom filter. Properties are the event's environment, preceded by
/// `ACTION`/`DEVPATH` from the event's fields when the environment lacks
/// them. SUBSYSTEM and a non-zero SEQNUM are required.
pub fn encode_libudev(event: &Uevent, tags: &[&str]) -> Result<Vec<u8>, EncodeError> {
    check_action(&event.action)?;
    check_devpath(&event.devpath)?;
    let mut properties = Vec::with_capacity(event.env.len() + 3);
    for (key, field) in [("ACTION", &event.action), ("DEVPATH", &event.devpath)] {
        match event.get(key) {
            None => properties.push((key.to_owned(), field.clone())),
            Some(value) if value == field => {}
            Some(_) => return Err(Invalid::Mismatch { key }.into()),
        }
    }
    properties.extend(event.env.iter().cloned());
    if !tags.is_empty() {
        if event.get("TAGS").is_some() {
            return Err(EncodeError::DuplicateTags);
        }
        for tag in tags {
            check_tag(tag)?;
        }
        properties.push(("TAGS".to_owned(), format!(":{}:", tags.join(":"))));
    }
    check_env(&properties)?;
    let checked = check_receivable(&properties)?;

    let mut properties_bytes = Vec::new();
    put_env(&mut properties_bytes, &properties);
    let header = LibudevHeader {
        header_size: LIBUDEV_HEADER_BYTES as u32,
        properties_off: LIBUDEV_HEADER_BYTES as u32,
        // Bounded by MAX_ENV_BYTES above.
        properties_len: properties_bytes.len() as u32,
        subsystem_hash: string_hash32(checked.subsystem),
        devtype_hash: checked.devtype.map_or(0, string_hash32),
        tag_bloom: tag_bloom64(checked.tags.split(':').filter(|t| !t.is_empty())),
    };
    let mut out = Vec::with_capacity(LIBUDEV_HEADER_BYTES + properties_bytes.len());
    out.extend_from_slice(LIBUDEV_PREFIX);
    out.extend_from_slice(&LIBUDEV_MAGIC.to_be_bytes());
    out.extend_from_slice(&header.header_size.to_ne_bytes());
    out.extend_from_slice(&header.properties_off.to_ne_bytes());
    out.extend_from_slice(&header.properties_len.to_ne_bytes());
    out.extend_from_slice(&header.subsystem_hash.to_be_bytes());
    out.extend_from_slice(&header.devtype_hash.to_be_bytes());
    out.extend_from_slice(&((header.tag_bloom >> 32) as u32).to_be_bytes());
    out.extend_from_slice(&(header.tag_bloom as u32).to_be_bytes());
    out.extend_from_slice(&properties_bytes);
    Ok(out)
}

/// Decodes and bounds-checks the header of a libudev message.
pub fn parse_libudev_header(bytes: &[u8]) -> Result<LibudevHeader, DecodeError> {
    let Some(head) = bytes.first_chunk::<LIBUDEV_HEADER_BYTES>() else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    if &head[..8] != LIBUDEV_PREFIX {
        return Err(DecodeError::NotLibudev);
    }
    let field = |at: usize| [head[at], head[at + 1], head[at + 2], head[at + 3]];
    let magic = u32::from_be_bytes(field(8));
    if magic != LIBUDEV_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let header = LibudevHeader {
        header_size: u32::from_ne_bytes(field(12)),
        properties_off: u32::from_ne_bytes(field(16)),
        properties_len: u32::from_ne_bytes(field(20)),
        subsystem_hash: u32::from_be_bytes(field(24)),
        devtype_hash: u32::from_be_bytes(field(28)),
        tag_bloom: u64::from(u32::from_be_bytes(field(32))) << 32
            | u64::from(u32::from_be_bytes(field(36))),
    };
    // The header may grow in later versions, but never shrink, and the
    // properties must follow it and end exactly at the end of the message.
    let end = u64::from(header.properties_off) + u64::from(header.properties_len);
    if (header.header_size as usize) < LIBUDEV_HEADER_BYTES
        || header.properties_off < header.header_size
        || end != bytes.len() as u64
    {
        return Err(DecodeError::Offsets);
    }
    Ok(header)
}

/// Decodes a libudev message; accepts only what a libudev receiver accepts.
/// `action` and `devpath` come from the ACTION and DEVPATH properties; `env`
/// holds all properties in order.
pub fn parse_libudev(bytes: &[u8]) -> Result<Uevent, DecodeError> {
    let header = parse_libudev_header(bytes)?;
    // parse_libudev_header checked properties_off <= bytes.len().
    let properties = bytes
        .get(header.properties_off as usize..)
        .ok_or(DecodeError::Offsets)?;
    let env = decode_env(properties)?;
    let event = Uevent {
        action: find(&env, "ACTION")?.to_owned(),
        devpath: find(&env, "DEVPATH")?.to_owned(),
        env,
    };
    check_action(&event.action)?;
    check_devpath(&event.devpath)?;
    check_receivable(&event.env)?;
    Ok(event)
}

struct Receivable<'a> {
    subsystem: &'a str,
    devtype: Option<&'a str>,
    tags: &'a str,
}

/// What `sd-device` requires of a received device (`device_verify`).
fn check_receivable(properties: &[(String, String)]) -> Result<Receivable<'_>, Invalid> {
    let action = find(properties, "ACTION")?;
    if !LIBUDEV_ACTIONS.contains(&action) {
        return Err(Invalid::UnknownAction(action.to_owned()));
    }
    find(properties, "DEVPATH")?;
    let subsystem = find(properties, "SUBSYSTEM")?;
    match find(properties, "SEQNUM")?.parse::<u64>() {
        Ok(seqnum) if seqnum != 0 => {}
        _ => return Err(Invalid::Seqnum),
    }
    let lookup = |key: &str| {
        properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    Ok(Receivable {
        subsystem,
        devtype: lookup("DEVTYPE"),
        tags: lookup("TAGS").unwrap_or(""),
    })
}

fn find<'a>(properties: &'a [(String, String)], key: &'static str) -> Result<&'a str, Invalid> {
    properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or(Invalid::MissingProperty(key))
}

fn check_tag(tag: &str) -> Result<(), Invalid> {
    if tag.is_empty()
        || tag.contains(':')
        || tag.contains('\0')
        || tag.contains(char::is_whitespace)
    {
        return Err(Invalid::Tag(tag.to_owned()));
    }
    Ok(())
}
