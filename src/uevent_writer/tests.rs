use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;

const VF: &str = "/devices/pci0000:40/0000:40:01.0/0000:41:00.4";
const PF: &str = "/devices/pci0000:40/0000:40:01.0/0000:41:00.0";

/// A tree with a vendor VF, its PF, an mdev parent and a plain device.
fn tree() -> (tempfile::TempDir, SysfsRoot) {
    let dir = tempfile::tempdir().unwrap();
    let root = SysfsRoot::new(dir.path()).canonicalize().unwrap();
    let at = |devpath: &str| root.devpath_to_path(devpath).unwrap();
    for device in [
        VF,
        PF,
        "/devices/virtual/mtty/mtty",
        "/devices/virtual/net/lo",
    ] {
        fs::create_dir_all(at(device)).unwrap();
        fs::write(at(device).join("uevent"), "DRIVER=x\n").unwrap();
    }
    fs::create_dir(at(VF).join("nvidia")).unwrap();
    symlink("../0000:41:00.0", at(VF).join("physfn")).unwrap();
    fs::create_dir(at("/devices/virtual/mtty/mtty").join("mdev_supported_types")).unwrap();
    (dir, root)
}

fn refused(root: &SysfsRoot, devpath: &str) -> Refusal {
    validate(root, devpath).expect_err(devpath)
}

#[test]
fn request_round_trips() {
    for state in [MdevState::Registered, MdevState::Unregistered] {
        let request = Request {
            state,
            devpath: VF.to_owned(),
        };
        assert_eq!(Request::decode(&request.encode()), Ok(request));
    }
    assert_eq!(
        Request {
            state: MdevState::Registered,
            devpath: "/devices/a".into()
        }
        .encode(),
        b"registered /devices/a\n"
    );
}

#[test]
fn garbage_requests_are_refused() {
    let cases: &[(&[u8], Refusal)] = &[
        (b"", Refusal::Unterminated),
        (b"registered /devices/a", Refusal::Unterminated),
        (b"registered\n", Refusal::Malformed),
        (b"registered /devices/a\nx\n", Refusal::Malformed),
        (b"gone /devices/a\n", Refusal::BadState("gone".into())),
        (
            b"registered  /devices/a\n",
            Refusal::BadDevpath(" /devices/a".into()),
        ),
        (
            b"registered /devices/a /devices/b\n",
            Refusal::BadDevpath("/devices/a /devices/b".into()),
        ),
        (
            b"registered /devices/../etc\n",
            Refusal::BadDevpath("/devices/../etc".into()),
        ),
        (
            b"registered /devices/a/../../etc\n",
            Refusal::BadDevpath("/devices/a/../../etc".into()),
        ),
        (
            b"registered /etc/passwd\n",
            Refusal::BadDevpath("/etc/passwd".into()),
        ),
        (
            b"registered devices/a\n",
            Refusal::BadDevpath("devices/a".into()),
        ),
        (
            b"registered /devices/a\0b\n",
            Refusal::BadDevpath("/devices/a\0b".into()),
        ),
        (b"registered /devices/\xff\n", Refusal::NotUtf8),
        (b"\xff\xfe\n", Refusal::NotUtf8),
    ];
    for (bytes, refusal) in cases {
        assert_eq!(
            Request::decode(bytes).as_ref(),
            Err(refusal),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut long = b"registered /devices/".to_vec();
    long.resize(MAX_REQUEST, b'a');
    long.push(b'\n');
    assert_eq!(Request::decode(&long), Err(Refusal::TooLong));
    assert_eq!(Refusal::TooLong.errno(), nix::libc::EMSGSIZE);
}

#[test]
fn answers_round_trip_as_one_line() {
    let uuid = uuid::Uuid::new_v4();
    assert_eq!(
        Answer::decode(&Answer::Ok(uuid).encode()),
        Some(Answer::Ok(uuid))
    );
    let error = Answer::Error(2, "gone\nreally".into());
    assert_eq!(error.encode(), b"error 2 gone really\n");
    assert_eq!(
        Answer::decode(&error.encode()),
        Some(Answer::Error(2, "gone really".into()))
    );
    for bad in [
        &b""[..],
        b"ok\n",
        b"ok nil\n",
        b"error x y\n",
        b"error 2\n",
        b"fine\n",
    ] {
        assert_eq!(
            Answer::decode(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn only_a_vendor_vf_is_accepted() {
    let (_dir, root) = tree();
    assert_eq!(
        validate(&root, VF).unwrap(),
        root.devpath_to_path(VF).unwrap()
    );
    for other in [PF, "/devices/virtual/mtty/mtty", "/devices/virtual/net/lo"] {
        assert_eq!(refused(&root, other), Refusal::NotVendorVf(other.into()));
    }
    // `nvidia` must be a directory and `physfn` a link.
    let lo = root.devpath_to_path("/devices/virtual/net/lo").unwrap();
    fs::write(lo.join("nvidia"), "").unwrap();
    fs::create_dir(lo.join("physfn")).unwrap();
    assert!(matches!(
        refused(&root, "/devices/virtual/net/lo"),
        Refusal::NotVendorVf(_)
    ));
    let gone = refused(&root, "/devices/virtual/none");
    assert!(
        matches!(gone, Refusal::Io { errno, .. } if errno == nix::libc::ENOENT),
        "{gone:?}"
    );
}

#[test]
fn symlinks_may_not_lead_elsewhere() {
    let (dir, root) = tree();
    let devices = root.path().join("devices");
    // A link out of the tree to a directory shaped like a VF.
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("nvidia")).unwrap();
    symlink("/", outside.path().join("physfn")).unwrap();
    fs::write(outside.path().join("uevent"), "").unwrap();
    symlink(outside.path(), devices.join("out")).unwrap();
    assert_eq!(
        refused(&root, "/devices/out"),
        Refusal::Escapes("/devices/out".into())
    );
    // A link inside the tree to the real VF: not its canonical path.
    symlink(root.devpath_to_path(VF).unwrap(), devices.join("alias")).unwrap();
    assert_eq!(
        refused(&root, "/devices/alias"),
        Refusal::NotCanonical("/devices/alias".into())
    );
    // A link to the tree's root itself.
    symlink(dir.path(), devices.join("up")).unwrap();
    assert!(matches!(refused(&root, "/devices/up"), Refusal::Escapes(_)));
}

#[test]
fn handle_writes_the_line_into_the_vf_only() {
    let (_dir, root) = tree();
    let request = Request {
        state: MdevState::Registered,
        devpath: VF.into(),
    };
    let uuid = handle(&root, &request).unwrap();
    let file = root.devpath_to_path(VF).unwrap().join("uevent");
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        crate::synth_uevent::change_line(MdevState::Registered, &uuid)
    );
    // A uevent file that is a symlink is not followed.
    let target = root.path().join("target");
    fs::write(&target, "untouched").unwrap();
    fs::remove_file(&file).unwrap();
    symlink(&target, &file).unwrap();
    let refusal = handle(&root, &request).unwrap_err();
    assert_eq!(refusal.errno(), nix::libc::ELOOP, "{refusal:?}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    // A VF without a uevent file: nothing is created.
    fs::remove_file(&file).unwrap();
    let refusal = handle(&root, &request).unwrap_err();
    assert_eq!(refusal.errno(), nix::libc::ENOENT, "{refusal:?}");
    assert!(!Path::new(&file).exists());
}

#[tokio::test]
async fn client_and_server_over_a_socket() {
    let (dir, root) = tree();
    let socket = dir.path().join("writer.sock");
    let listener = server::listener(Some(&socket)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let served = root.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            server::serve_one(stream.unwrap(), &served);
        }
    });
    let uuid = request(&socket, VF, MdevState::Unregistered).await.unwrap();
    assert_eq!(
        fs::read_to_string(root.devpath_to_path(VF).unwrap().join("uevent")).unwrap(),
        crate::synth_uevent::change_line(MdevState::Unregistered, &uuid)
    );
    let err = request(&socket, PF, MdevState::Registered)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("not an NVIDIA vendor-specific VFIO"),
        "{err}"
    );
    let err = request(&socket, "/devices/virtual/none", MdevState::Registered)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    // Nobody listening: a clear error, no wait.
    drop(dir);
    let err = request(&socket, VF, MdevState::Registered)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("uevent writer at"), "{err}");
}
