//! Fuzzes the libudev codec: decoding never panics, whatever decodes
//! re-encodes, decodes back to the same event and carries the right hashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdevreg::uevent::{
    encode_libudev, parse_libudev, parse_libudev_header, string_hash32, tag_bloom64,
    LIBUDEV_HEADER_BYTES, LIBUDEV_MAGIC, LIBUDEV_PREFIX,
};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Random bytes rarely form a valid header: also try them as the
    // properties behind one.
    let mut message = LIBUDEV_PREFIX.to_vec();
    message.extend_from_slice(&LIBUDEV_MAGIC.to_be_bytes());
    message.extend_from_slice(&(LIBUDEV_HEADER_BYTES as u32).to_ne_bytes());
    message.extend_from_slice(&(LIBUDEV_HEADER_BYTES as u32).to_ne_bytes());
    message.extend_from_slice(&(data.len() as u32).to_ne_bytes());
    message.extend_from_slice(&[0; 16]);
    message.extend_from_slice(data);
    check(&message);
});

fn check(data: &[u8]) {
    let _ = parse_libudev_header(data);
    let Ok(event) = parse_libudev(data) else {
        return;
    };
    let bytes = encode_libudev(&event, &[]).expect("a decoded event encodes");
    assert_eq!(parse_libudev(&bytes).as_ref(), Ok(&event));
    let header = parse_libudev_header(&bytes).expect("own header decodes");
    let subsystem = event.subsystem().expect("libudev events have SUBSYSTEM");
    assert_eq!(header.subsystem_hash, string_hash32(subsystem));
    assert_eq!(
        header.devtype_hash,
        event.get("DEVTYPE").map_or(0, string_hash32)
    );
    let tags = event.get("TAGS").unwrap_or("");
    assert_eq!(
        header.tag_bloom,
        tag_bloom64(tags.split(':').filter(|t| !t.is_empty()))
    );
    assert!(event.seqnum().is_some_and(|n| n != 0));
}
