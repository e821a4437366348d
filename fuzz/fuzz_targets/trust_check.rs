//! Fuzzes the trust check: it never panics, and it accepts only kernel-group
//! messages from port 0 with root credentials that decode as kernel uevents,
//! rejecting for the first failed check in sd-device's order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdevreg::uevent::{accept_kernel, parse_kernel, Credentials, Reject};

fuzz_target!(|data: &[u8]| {
    // The first 13 bytes choose the sender address and credentials.
    let Some((head, bytes)) = data.split_first_chunk::<13>() else {
        return;
    };
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    // Small values are the interesting ones: fold most inputs onto 0..=3.
    let small = |value: u32| {
        if value & 0x8000_0000 == 0 {
            value & 3
        } else {
            value
        }
    };
    let sender_port = small(word(0));
    let groups = small(word(4));
    let credentials = (head[12] & 1 == 1).then(|| Credentials {
        pid: (word(8) & 0xff) as i32,
        uid: small(word(8) >> 8),
        gid: 0,
    });
    let verdict = accept_kernel(sender_port, groups, credentials, bytes);
    // The checks run in a fixed order; the first failing one decides.
    let expected = if bytes.is_empty() {
        Err(Reject::Truncated)
    } else if groups != 1 {
        Err(Reject::NotKernelGroup { groups })
    } else if sender_port != 0 {
        Err(Reject::NotFromKernelPort { port: sender_port })
    } else if credentials.is_none() {
        Err(Reject::NoCredentials)
    } else if let Some(Credentials { uid: uid @ 1.., .. }) = credentials {
        Err(Reject::NonRootSender { uid })
    } else if bytes.starts_with(b"libudev\0") {
        Err(Reject::LibudevFormat)
    } else {
        parse_kernel(bytes).map_err(Reject::Malformed)
    };
    assert_eq!(verdict, expected);
});
