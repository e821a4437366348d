//! Unit tests of the codecs and the trust check on byte fixtures.

use super::*;
use proptest::prelude::*;

const I915: &str = "/devices/pci0000:00/0000:00:02.0";

/// A kernel `change` event as `mdev_core.c` sends it for an i915 parent.
fn registered_fixture() -> Vec<u8> {
    let mut bytes =
        format!("change@{I915}\0ACTION=change\0DEVPATH={I915}\0SUBSYSTEM=pci\0").into_bytes();
    bytes.extend_from_slice(b"MDEV_STATE=registered\0DRIVER=i915\0SEQNUM=4321\0");
    bytes
}

fn mdevreg_event() -> Uevent {
    Uevent::new("change", "/devices/virtual/mdevreg/p1")
        .with("SUBSYSTEM", "mdevreg")
        .with("MDEV_STATE", "registered")
        .with("MDEV_PARENT", "p1")
        .with("MDEVREG_SEQNUM", "7")
}

fn root() -> Option<Credentials> {
    Some(Credentials {
        pid: 0,
        uid: 0,
        gid: 0,
    })
}

// ---- MurmurHash2: vectors computed with the reference C implementation ----

#[test]
fn uevent_murmur_known_vectors() {
    let vectors: [(&[u8], u32, u32); 16] = [
        (b"", 0, 0x0000_0000),
        (b"a", 0, 0x9268_5f5e),
        (b"ab", 0, 0x1aa1_4063),
        (b"abc", 0, 0x1357_7c9b),
        (b"abcd", 0, 0x2687_3021),
        (b"mdev_parent", 0, 0x8040_8d2e),
        (b"mdevreg", 0, 0x216a_59ff),
        (b"mdev", 0, 0xbb52_11c7),
        (b"block", 0, 0xf003_1db7),
        (b"uaccess", 0, 0xe88e_d0cc),
        (b"0123456789abcdefghijklmnopqrstuvwxyz", 0, 0x97d9_0618),
        (b"\xff\xfe\x80", 0, 0xa30e_fe85),
        (b"", 7, 0x82bc_6669),
        (b"a", 7, 0xfbeb_9e30),
        (b"abcd", 7, 0x80c2_68ee),
        (b"mdev_parent", 7, 0x1269_42c5),
    ];
    for (data, seed, expected) in vectors {
        assert_eq!(murmur_hash2(data, seed), expected, "{data:?} seed {seed}");
    }
    assert_eq!(string_hash32("mdev_parent"), 0x8040_8d2e);
}

#[test]
fn uevent_tag_bloom_vectors() {
    assert_eq!(tag_bloom64(["uaccess"]), 0x0000_2008_0000_1008);
    assert_eq!(tag_bloom64(["seat"]), 0x0208_0000_0040_0001);
    assert_eq!(tag_bloom64(["uaccess", "seat"]), 0x0208_2008_0040_1009);
    assert_eq!(tag_bloom64([]), 0);
}

// ---- Uevent accessors ----

#[test]
fn uevent_accessors() {
    let event = parse_kernel(&registered_fixture()).unwrap();
    assert_eq!(event.action, "change");
    assert_eq!(event.devpath, I915);
    assert_eq!(event.get("MDEV_STATE"), Some("registered"));
    assert_eq!(event.get("NOPE"), None);
    assert_eq!(event.seqnum(), Some(4321));
    assert_eq!(event.subsystem(), Some("pci"));
    let mut event = Uevent::new("add", "/x").with("SEQNUM", "12x");
    assert_eq!(event.seqnum(), None);
    event.set("SEQNUM", "12");
    assert_eq!(event.seqnum(), Some(12));
    assert_eq!(event.env.len(), 3);
}

// ---- kernel format ----

#[test]
fn uevent_kernel_fixture_round_trip() {
    let bytes = registered_fixture();
    let event = parse_kernel(&bytes).unwrap();
    assert_eq!(event.env.len(), 6);
    assert_eq!(encode_kernel(&event).unwrap(), bytes);
}

#[test]
fn uevent_kernel_rejects() {
    let cases: [(&[u8], DecodeError); 11] = [
        (b"", DecodeError::Header),
        (b"change@/x", DecodeError::Header),
        (b"change/x\0A=b\0", DecodeError::Header),
        (b"libudev\0\xfe\xed\xca\xfe", DecodeError::Header),
        (b"@/x\0", Invalid::Action.into()),
        (b"chan ge@/x\0", Invalid::Action.into()),
        (b"change@x\0", Invalid::Devpath.into()),
        (b"change@/x\0A=b", DecodeError::Unterminated),
        (b"change@/x\0A=b\0\0", DecodeError::EmptyEntry),
        (
            b"change@/x\0A=b\0Ab\0",
            DecodeError::NotKeyValue { index: 1 },
        ),
        (b"change@/x\0=b\0", Invalid::Key { index: 0 }.into()),
    ];
    for (bytes, expected) in cases {
        assert_eq!(parse_kernel(bytes), Err(expected), "{bytes:?}");
    }
    assert_eq!(
        parse_kernel(b"change@/x\0A=\xff\0"),
        Err(DecodeError::NotUtf8)
    );
    // Values may be empty and hold '='.
    let event = parse_kernel(b"change@/x\0A=\0B=c=d\0").unwrap();
    assert_eq!(event.env, [pair("A", ""), pair("B", "c=d")]);
    // No environment at all is allowed by the codec.
    assert_eq!(parse_kernel(b"add@/x\0").unwrap().env, []);
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

/// An environment of `keys` entries taking exactly `bytes` bytes.
fn env_of(keys: usize, bytes: usize) -> Vec<(String, String)> {
    let mut env: Vec<_> = (0..keys)
        .map(|i| (format!("K{i:02}"), String::new()))
        .collect();
    let used: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    env[0].1 = "v".repeat(bytes - used);
    env
}

#[test]
fn uevent_kernel_bounds() {
    let mut event = Uevent::new("add", "/x");
    event.env = env_of(MAX_ENV_KEYS, MAX_ENV_BYTES);
    let bytes = encode_kernel(&event).unwrap();
    assert_eq!(parse_kernel(&bytes).unwrap(), event);

    event.env = env_of(MAX_ENV_KEYS, MAX_ENV_BYTES + 1);
    let too_big = Invalid::EnvTooLarge {
        bytes: MAX_ENV_BYTES + 1,
    };
    assert_eq!(encode_kernel(&event), Err(too_big.clone().into()));
    let mut bytes = b"add@/x\0".to_vec();
    put_env(&mut bytes, &event.env);
    assert_eq!(parse_kernel(&bytes), Err(too_big.into()));

    event.env = env_of(MAX_ENV_KEYS + 1, 1000);
    let too_many = Invalid::TooManyKeys {
        count: MAX_ENV_KEYS + 1,
    };
    assert_eq!(encode_kernel(&event), Err(too_many.clone().into()));
    let mut bytes = b"add@/x\0".to_vec();
    put_env(&mut bytes, &event.env);
    assert_eq!(parse_kernel(&bytes), Err(too_many.into()));

    let long_devpath = format!("/{}", "d".repeat(MAX_DEVPATH_BYTES));
    let event = Uevent::new("add", long_devpath);
    assert_eq!(encode_kernel(&event), Err(Invalid::Devpath.into()));
}

#[test]
fn uevent_kernel_encode_rejects_bad_fields() {
    let event = Uevent::new("add", "/x").with("A=B", "c");
    assert_eq!(encode_kernel(&event), Err(Invalid::Key { index: 2 }.into()));
    let event = Uevent::new("add", "/x").with("A", "c\0");
    assert_eq!(
        encode_kernel(&event),
        Err(Invalid::Value { index: 2 }.into())
    );
    let event = Uevent::new("add", "/x").with("", "c");
    assert_eq!(encode_kernel(&event), Err(Invalid::Key { index: 2 }.into()));
    let event = Uevent::new("a@b", "/x");
    assert_eq!(encode_kernel(&event), Err(Invalid::Action.into()));
}

// ---- injection message ----

#[test]
fn uevent_injection_layout() {
    let event = mdevreg_event();
    let bytes = encode_injection(&event, 0x0102_0304).unwrap();
    let payload = encode_kernel(&event).unwrap();
    assert_eq!(bytes.len(), NLMSG_HDR_BYTES + payload.len());
    assert_eq!(&bytes[0..4], &(bytes.len() as u32).to_ne_bytes());
    assert_eq!(&bytes[4..6], &0x10u16.to_ne_bytes());
    assert_eq!(&bytes[6..8], &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    assert_eq!(&bytes[8..12], &0x0102_0304u32.to_ne_bytes());
    assert_eq!(&bytes[12..16], &[0, 0, 0, 0]);
    assert_eq!(&bytes[16..], &payload[..]);
    let (header, parsed) = parse_injection(&bytes).unwrap();
    assert_eq!(parsed, event);
    assert_eq!(header.seq, 0x0102_0304);
    assert_eq!(header.pid, 0);
}

#[test]
fn uevent_injection_rejects() {
    let event = mdevreg_event().with("SEQNUM", "1");
    assert_eq!(
        encode_injection(&event, 0),
        Err(EncodeError::SeqnumInInjection)
    );
    // 63 keys leave room for SEQNUM, 64 do not.
    let mut event = Uevent::new("add", "/x");
    event.env = env_of(MAX_ENV_KEYS - 1, 600);
    assert!(encode_injection(&event, 0).is_ok());
    event.env = env_of(MAX_ENV_KEYS, 600);
    assert!(matches!(
        encode_injection(&event, 0),
        Err(EncodeError::Invalid(Invalid::TooManyKeys { .. }))
    ));
    // The nlmsghdr, header and SEQNUM must fit the kernel's 2048 bytes.
    event.env = env_of(4, 2048 - 16 - "add@/x\0".len() - 28);
    assert!(encode_injection(&event, 0).is_ok());
    event.env = env_of(4, 2048 - 16 - "add@/x\0".len() - 27);
    assert_eq!(
        encode_injection(&event, 0),
        Err(EncodeError::InjectionTooLarge {
            bytes: 2021,
            max: 2020
        })
    );

    let good = encode_injection(&mdevreg_event(), 1).unwrap();
    assert_eq!(
        parse_injection(&good[..10]),
        Err(DecodeError::TooShort { len: 10 })
    );
    let mut short_len = good.clone();
    short_len[0] -= 1;
    assert!(matches!(
        parse_injection(&short_len),
        Err(DecodeError::Netlink(_))
    ));
    let mut control_type = good.clone();
    control_type[4..6].copy_from_slice(&3u16.to_ne_bytes());
    assert!(matches!(
        parse_injection(&control_type),
        Err(DecodeError::Netlink(_))
    ));
    let mut no_request = good.clone();
    no_request[6..8].copy_from_slice(&0u16.to_ne_bytes());
    assert!(matches!(
        parse_injection(&no_request),
        Err(DecodeError::Netlink(_))
    ));
}

// ---- libudev format ----

#[test]
fn uevent_libudev_layout() {
    let event = mdevreg_event().with("SEQNUM", "7");
    let bytes = encode_libudev(&event, &["uaccess", "seat"]).unwrap();
    assert_eq!(&bytes[..8], b"libudev\0");
    assert_eq!(&bytes[8..12], &[0xfe, 0xed, 0xca, 0xfe]);
    assert_eq!(&bytes[12..16], &40u32.to_ne_bytes());
    assert_eq!(&bytes[16..20], &40u32.to_ne_bytes());
    assert_eq!(&bytes[20..24], &((bytes.len() - 40) as u32).to_ne_bytes());
    assert_eq!(&bytes[24..28], &0x216a_59ffu32.to_be_bytes()); // "mdevreg"
    assert_eq!(&bytes[28..32], &[0, 0, 0, 0]); // no DEVTYPE
    assert_eq!(&bytes[32..36], &0x0208_2008u32.to_be_bytes());
    assert_eq!(&bytes[36..40], &0x0040_1009u32.to_be_bytes());
    let mut expected = b"ACTION=change\0DEVPATH=/devices/virtual/mdevreg/p1\0".to_vec();
    expected.extend_from_slice(b"SUBSYSTEM=mdevreg\0MDEV_STATE=registered\0MDEV_PARENT=p1\0");
    expected.extend_from_slice(b"MDEVREG_SEQNUM=7\0SEQNUM=7\0TAGS=:uaccess:seat:\0");
    assert_eq!(&bytes[40..], &expected[..]);

    let parsed = parse_libudev(&bytes).unwrap();
    assert_eq!(parsed, event.clone().with("TAGS", ":uaccess:seat:"));
    // Re-encoding a parsed message keeps TAGS and the bloom filter.
    assert_eq!(encode_libudev(&parsed, &[]).unwrap(), bytes);
    let header = parse_libudev_header(&bytes).unwrap();
    assert_eq!(header.tag_bloom, tag_bloom64(["uaccess", "seat"]));
}

#[test]
fn uevent_libudev_devtype_and_missing_action_devpath() {
    let event = Uevent {
        action: "add".into(),
        devpath: "/devices/x".into(),
        env: vec![
            pair("SUBSYSTEM", "block"),
            pair("DEVTYPE", "disk"),
            pair("SEQNUM", "9"),
        ],
    };
    let bytes = encode_libudev(&event, &[]).unwrap();
    let header = parse_libudev_header(&bytes).unwrap();
    assert_eq!(header.subsystem_hash, 0xf003_1db7);
    assert_eq!(header.devtype_hash, string_hash32("disk"));
    assert_eq!(header.tag_bloom, 0);
    let parsed = parse_libudev(&bytes).unwrap();
    assert_eq!(parsed.env[0], pair("ACTION", "add"));
    assert_eq!(parsed.env[1], pair("DEVPATH", "/devices/x"));
    assert_eq!(parsed.action, "add");
}

#[test]
fn uevent_libudev_encode_rejects() {
    let no_seqnum = mdevreg_event();
    assert_eq!(
        encode_libudev(&no_seqnum, &[]),
        Err(Invalid::MissingProperty("SEQNUM").into())
    );
    let zero = mdevreg_event().with("SEQNUM", "0");
    assert_eq!(encode_libudev(&zero, &[]), Err(Invalid::Seqnum.into()));
    let no_subsystem = Uevent::new("change", "/x").with("SEQNUM", "1");
    assert_eq!(
        encode_libudev(&no_subsystem, &[]),
        Err(Invalid::MissingProperty("SUBSYSTEM").into())
    );
    let mut unknown = mdevreg_event().with("SEQNUM", "1");
    unknown.action = "frob".into();
    unknown.set("ACTION", "frob");
    assert_eq!(
        encode_libudev(&unknown, &[]),
        Err(Invalid::UnknownAction("frob".into()).into())
    );
    let mut mismatch = mdevreg_event().with("SEQNUM", "1");
    mismatch.devpath = "/other".into();
    assert_eq!(
        encode_libudev(&mismatch, &[]),
        Err(Invalid::Mismatch { key: "DEVPATH" }.into())
    );
    let tagged = mdevreg_event().with("SEQNUM", "1").with("TAGS", ":a:");
    assert_eq!(
        encode_libudev(&tagged, &["b"]),
        Err(EncodeError::DuplicateTags)
    );
    let event = mdevreg_event().with("SEQNUM", "1");
    for bad in ["", "a:b", "a b"] {
        assert_eq!(
            encode_libudev(&event, &[bad]),
            Err(Invalid::Tag(bad.into()).into())
        );
    }
}

#[test]
fn uevent_libudev_parse_rejects() {
    let good = encode_libudev(&mdevreg_event().with("SEQNUM", "3"), &[]).unwrap();
    assert_eq!(
        parse_libudev(&good[..39]),
        Err(DecodeError::TooShort { len: 39 })
    );
    let mut prefix = good.clone();
    prefix[0] = b'L';
    assert_eq!(parse_libudev(&prefix), Err(DecodeError::NotLibudev));
    let mut magic = good.clone();
    magic[8..12].copy_from_slice(&LIBUDEV_MAGIC.to_le_bytes());
    assert_eq!(
        parse_libudev(&magic),
        Err(DecodeError::BadMagic(0xfeca_edfe))
    );
    let set = |at: usize, value: u32| {
        let mut bytes = good.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        bytes
    };
    for bytes in [
        set(12, 39),
        set(12, 41),
        set(16, u32::MAX),
        set(20, u32::MAX),
        set(20, (good.len() - 41) as u32),
        set(16, 41),
    ] {
        assert_eq!(parse_libudev(&bytes), Err(DecodeError::Offsets));
    }
    assert_eq!(
        parse_libudev(&good[..good.len() - 1]),
        Err(DecodeError::Offsets)
    );
    // A header of 44 bytes (a later version) is skipped.
    let mut longer = good[..40].to_vec();
    longer[12..16].copy_from_slice(&44u32.to_ne_bytes());
    longer[16..20].copy_from_slice(&44u32.to_ne_bytes());
    longer.extend_from_slice(&[0; 4]);
    longer.extend_from_slice(&good[40..]);
    assert_eq!(parse_libudev(&longer), parse_libudev(&good));
    // Properties libudev needs.
    let mut bytes = good[..40].to_vec();
    let body = b"ACTION=change\0DEVPATH=/x\0SUBSYSTEM=s\0";
    bytes[20..24].copy_from_slice(&(body.len() as u32).to_ne_bytes());
    bytes.extend_from_slice(body);
    assert_eq!(
        parse_libudev(&bytes),
        Err(Invalid::MissingProperty("SEQNUM").into())
    );
}

// ---- trust check ----

#[test]
fn uevent_trust_accepts_kernel_event() {
    let event = accept_kernel(0, 1, root(), &registered_fixture()).unwrap();
    assert_eq!(event.get("MDEV_STATE"), Some("registered"));
    let injected_by_pid_42 = Some(Credentials {
        pid: 42,
        uid: 0,
        gid: 0,
    });
    assert!(accept_kernel(0, 1, injected_by_pid_42, &registered_fixture()).is_ok());
}

#[test]
fn uevent_trust_rejects_each() {
    let bytes = registered_fixture();
    assert_eq!(accept_kernel(0, 1, root(), b""), Err(Reject::Truncated));
    assert_eq!(
        accept_kernel(0, 0, root(), &bytes),
        Err(Reject::NotKernelGroup { groups: 0 })
    );
    assert_eq!(
        accept_kernel(0, 2, root(), &bytes),
        Err(Reject::NotKernelGroup { groups: 2 })
    );
    assert_eq!(
        accept_kernel(4242, 1, root(), &bytes),
        Err(Reject::NotFromKernelPort { port: 4242 })
    );
    assert_eq!(
        accept_kernel(0, 1, None, &bytes),
        Err(Reject::NoCredentials)
    );
    let user = Some(Credentials {
        pid: 0,
        uid: 1000,
        gid: 1000,
    });
    assert_eq!(
        accept_kernel(0, 1, user, &bytes),
        Err(Reject::NonRootSender { uid: 1000 })
    );
    let libudev = encode_libudev(&mdevreg_event().with("SEQNUM", "3"), &[]).unwrap();
    assert_eq!(
        accept_kernel(0, 1, root(), &libudev),
        Err(Reject::LibudevFormat)
    );
    assert_eq!(
        accept_kernel(0, 1, root(), b"change@/x\0A=b"),
        Err(Reject::Malformed(DecodeError::Unterminated))
    );
}

// ---- property tests ----

fn arb_text(pattern: &'static str) -> impl Strategy<Value = String> {
    proptest::string::string_regex(pattern).unwrap()
}

prop_compose! {
    fn arb_uevent()(
        action in prop::sample::select(LIBUDEV_ACTIONS.to_vec()),
        devpath in arb_text("/[a-z0-9:._/@-]{0,40}"),
        subsystem in arb_text("[a-z_]{1,12}"),
        seqnum in 1u64..,
        extra in prop::collection::vec(
            (arb_text("[A-Z_][A-Z0-9_]{0,15}"), arb_text("[^\u{0}]{0,20}")), 0..12),
    ) -> Uevent {
        let mut event = Uevent::new(action, devpath)
            .with("SUBSYSTEM", subsystem)
            .with("SEQNUM", seqnum.to_string());
        // TAGS is covered by the `tags` argument of the libudev encoder.
        event.env.extend(extra.into_iter().filter(|(key, _)| key != "TAGS"));
        event
    }
}

proptest! {
    #[test]
    fn uevent_prop_kernel_round_trip(event in arb_uevent()) {
        let bytes = encode_kernel(&event).unwrap();
        prop_assert_eq!(parse_kernel(&bytes).unwrap(), event);
    }

    #[test]
    fn uevent_prop_libudev_round_trip(event in arb_uevent(), tagged in any::<bool>()) {
        let tags: &[&str] = if tagged { &["mdevreg", "uaccess"] } else { &[] };
        let bytes = encode_libudev(&event, tags).unwrap();
        let mut expected = event.clone();
        if tagged {
            expected.env.push(pair("TAGS", ":mdevreg:uaccess:"));
        }
        prop_assert_eq!(parse_libudev(&bytes).unwrap(), expected);
        let header = parse_libudev_header(&bytes).unwrap();
        prop_assert_eq!(header.subsystem_hash, string_hash32(event.subsystem().unwrap()));
    }

    #[test]
    fn uevent_prop_injection_round_trip(event in arb_uevent(), seq in any::<u32>()) {
        let mut event = event;
        event.env.retain(|(k, _)| k != "SEQNUM");
        let bytes = encode_injection(&event, seq).unwrap();
        let (header, parsed) = parse_injection(&bytes).unwrap();
        prop_assert_eq!(parsed, event);
        prop_assert_eq!(header.seq, seq);
    }

    #[test]
    fn uevent_prop_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        let _ = parse_kernel(&bytes);
        let _ = parse_libudev(&bytes);
        let _ = parse_injection(&bytes);
        let _ = accept_kernel(0, 1, root(), &bytes);
    }

    #[test]
    fn uevent_prop_accepted_reencodes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(event) = parse_kernel(&bytes) {
            prop_assert_eq!(encode_kernel(&event).unwrap(), bytes);
        }
    }
}
