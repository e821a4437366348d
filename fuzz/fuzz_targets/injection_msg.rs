//! Fuzzes the injection message codec: decoding never panics, whatever
//! decodes re-encodes to the same event, and what the kernel broadcasts for it
//! (the payload plus `SEQNUM=N\0`) decodes as a kernel uevent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdevreg::uevent::{encode_injection, parse_injection, parse_kernel, NLMSG_HDR_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok((header, event)) = parse_injection(data) else {
        return;
    };
    let bytes = encode_injection(&event, header.seq).expect("a decoded injection encodes");
    let (again_header, again) = parse_injection(&bytes).expect("own injection decodes");
    assert_eq!(again, event);
    assert_eq!(again_header.seq, header.seq);

    // What the kernel sends on group 1, with the largest possible SEQNUM.
    let mut broadcast = bytes[NLMSG_HDR_BYTES..].to_vec();
    broadcast.extend_from_slice(format!("SEQNUM={}\0", u64::MAX).as_bytes());
    let received = parse_kernel(&broadcast).expect("the kernel's broadcast decodes");
    assert_eq!(received.seqnum(), Some(u64::MAX));
    assert_eq!(received.env[..received.env.len() - 1], event.env[..]);
});
