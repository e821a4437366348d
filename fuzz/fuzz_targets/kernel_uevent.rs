//! Fuzzes the kernel uevent codec: decoding never panics, whatever decodes
//! re-encodes to the same bytes, and whatever encodes decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdevreg::uevent::{encode_kernel, parse_kernel, Uevent};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = parse_kernel(data) {
        let bytes = encode_kernel(&event).expect("a decoded event encodes");
        assert_eq!(bytes, data, "re-encoding changed the bytes");
    }

    // The same bytes read as fields: NUL-separated action, devpath, then
    // KEY=VALUE strings (lossy UTF-8).
    let mut fields = data
        .split(|&b| b == 0)
        .map(|field| String::from_utf8_lossy(field).into_owned());
    let (Some(action), Some(devpath)) = (fields.next(), fields.next()) else {
        return;
    };
    let env = fields
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (entry, String::new()),
        })
        .collect();
    let event = Uevent {
        action,
        devpath,
        env,
    };
    if let Ok(bytes) = encode_kernel(&event) {
        assert_eq!(parse_kernel(&bytes).as_ref(), Ok(&event));
    }
});
