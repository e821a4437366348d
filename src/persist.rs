//! State files for userspace registrations: owner-bound ones in the runtime
//! directory (`--runtime-dir`, default `/run/mdevreg`), persistent ones in
//! the state directory (`--state-dir`, default `/var/lib/mdevreg`); for a
//! daemon not run by root the defaults follow `$XDG_RUNTIME_DIR` and
//! `$XDG_STATE_HOME` ([`StateDirs::resolve`]). Writes are atomic (temp file, fsync, rename, fsync dir);
//! loading never fails: a missing file is empty, a damaged one is moved aside
//! with a warning, and invalid records are dropped with a warning.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Lifetime, Parent, Source};

/// Default directory of the owner-bound state file (gone after a reboot).
pub const OWNER_STATE_DIR: &str = "/run/mdevreg";
/// Default directory of the persistent state file.
pub const PERSISTENT_STATE_DIR: &str = "/var/lib/mdevreg";
/// File name of the owner-bound registrations.
pub const OWNER_STATE_FILE: &str = "owner-registrations.json";
/// File name of the persistent registrations.
pub const PERSISTENT_STATE_FILE: &str = "persistent-registrations.json";

/// Value of the `format` field of every state file.
pub const FORMAT_NAME: &str = "mdevreg-state";
/// Version of the file layout written by this build; others are moved aside.
pub const FORMAT_VERSION: u32 = 1;
/// A state file larger than this is not read (moved aside instead).
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// At most this many records are loaded from one file; the rest are dropped.
pub const MAX_RECORDS: usize = 65_536;
/// Bounds from SPEC §3, applied to loaded records.
pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_STRING_BYTES: usize = 4096;
pub const MAX_TYPES_PER_PARENT: usize = 1024;

/// One stored registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRegistration {
    pub parent: Parent,
}

impl From<Parent> for StoredRegistration {
    fn from(parent: Parent) -> Self {
        StoredRegistration { parent }
    }
}

/// On-disk layout (JSON).
#[derive(Serialize)]
struct FileOut<'a> {
    format: &'a str,
    version: u32,
    last_seqnum: u64,
    registrations: &'a [StoredRegistration],
}

/// Header read first, so that a newer layout is recognised before its
/// records are interpreted.
#[derive(Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct FileBodyV1 {
    last_seqnum: u64,
    registrations: Vec<serde_json::Value>,
}

/// What [`StateStore::load`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Valid records, in file order, names unique.
    pub records: Vec<StoredRegistration>,
    /// Highest registry sequence number the file knew of: the header's value,
    /// raised to the highest `registered_seqnum` of a loaded record.
    pub last_seqnum: u64,
    /// Problems met (file moved aside, records dropped), for the log.
    pub warnings: Vec<String>,
}

/// The owner-bound and the persistent store of one daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateStores {
    pub owner: StateStore,
    pub persistent: StateStore,
}

/// Where a daemon keeps its state: owner-bound registrations (and anything
/// else that must not outlive the boot) in `runtime`, persistent ones in
/// `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDirs {
    pub runtime: PathBuf,
    pub state: PathBuf,
}

impl StateDirs {
    /// The directories from `--runtime-dir` / `--state-dir` if given, else
    /// the defaults for a daemon running as `euid`: `/run/mdevreg` and
    /// `/var/lib/mdevreg` for root; for any other user
    /// `$XDG_RUNTIME_DIR/mdevreg` and `$XDG_STATE_HOME/mdevreg` (that is
    /// `~/.local/state/mdevreg` when unset), as the XDG base directory
    /// specification says. `env` reads the environment (empty values count
    /// as unset). An error names what is missing.
    pub fn resolve(
        runtime_dir: Option<&Path>,
        state_dir: Option<&Path>,
        euid: u32,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<StateDirs, String> {
        let env = |name: &str| {
            env(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
                // The specification: relative paths are invalid, ignore them.
                .filter(|path| path.is_absolute())
        };
        let runtime = match runtime_dir {
            Some(dir) => dir.to_path_buf(),
            None if euid == 0 => PathBuf::from(OWNER_STATE_DIR),
            None => env("XDG_RUNTIME_DIR")
                .map(|dir| dir.join("mdevreg"))
                .ok_or_else(|| {
                    "XDG_RUNTIME_DIR is not set: pass --runtime-dir DIR (a directory only \
                     this user can write, cleared at boot)"
                        .to_owned()
                })?,
        };
        let state = match state_dir {
            Some(dir) => dir.to_path_buf(),
            None if euid == 0 => PathBuf::from(PERSISTENT_STATE_DIR),
            None => env("XDG_STATE_HOME")
                .or_else(|| env("HOME").map(|home| home.join(".local/state")))
                .map(|dir| dir.join("mdevreg"))
                .ok_or_else(|| {
                    "neither XDG_STATE_HOME nor HOME is set: pass --state-dir DIR".to_owned()
                })?,
        };
        Ok(StateDirs { runtime, state })
    }
}

impl StateStores {
    /// The stores in `dirs`.
    pub fn new(dirs: &StateDirs) -> Self {
        StateStores {
            owner: StateStore::new(dirs.runtime.join(OWNER_STATE_FILE), Lifetime::Owner),
            persistent: StateStore::new(
                dirs.state.join(PERSISTENT_STATE_FILE),
                Lifetime::Persistent,
            ),
        }
    }

    /// Both stores in one directory (tests, benchmarks).
    pub fn in_dir(dir: &Path) -> Self {
        StateStores::new(&StateDirs {
            runtime: dir.to_path_buf(),
            state: dir.to_path_buf(),
        })
    }

    /// The store that keeps registrations of `lifetime` (`None` for kernel parents).
    pub fn for_lifetime(&self, lifetime: Lifetime) -> Option<&StateStore> {
        match lifetime {
            Lifetime::Owner => Some(&self.owner),
            Lifetime::Persistent => Some(&self.persistent),
            Lifetime::Kernel => None,
        }
    }
}

/// One state file, holding userspace registrations of one lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateStore {
    path: PathBuf,
    lifetime: Lifetime,
}

impl StateStore {
    /// A store at `path` for registrations of `lifetime`; loaded records of
    /// another lifetime are dropped.
    pub fn new(path: PathBuf, lifetime: Lifetime) -> Self {
        StateStore { path, lifetime }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    /// Reads the state file. Never fails: a missing file gives an empty
    /// outcome; an unreadable, oversized, unparsable or foreign-version file is
    /// renamed to `<name>.corrupt-<unix-time>` and gives an empty outcome with
    /// a warning; invalid records are dropped with a warning each. Leftover
    /// temp files of an interrupted [`save`](Self::save) are removed.
    pub fn load(&self) -> LoadOutcome {
        let mut outcome = LoadOutcome::default();
        self.remove_stale_temp_files(&mut outcome.warnings);
        let bytes = match self.read_bounded() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return outcome,
            Err(reason) => {
                self.move_aside(&reason, &mut outcome.warnings);
                return outcome;
            }
        };
        let body = match parse_body(&bytes) {
            Ok(body) => body,
            Err(reason) => {
                self.move_aside(&reason, &mut outcome.warnings);
                return outcome;
            }
        };
        outcome.last_seqnum = body.last_seqnum;
        let mut names = HashSet::new();
        for (index, value) in body.registrations.into_iter().enumerate() {
            if index >= MAX_RECORDS {
                outcome.warnings.push(format!(
                    "{}: more than {MAX_RECORDS} records, dropped the rest",
                    self.path.display()
                ));
                break;
            }
            let record: StoredRegistration = match serde_json::from_value(value) {
                Ok(record) => record,
                Err(err) => {
                    outcome.warnings.push(format!(
                        "{}: dropped record {index}: {err}",
                        self.path.display()
                    ));
                    continue;
                }
            };
            let checked = validate_record(&record.parent, self.lifetime).and_then(|()| {
                if names.insert(record.parent.info.name.clone()) {
                    Ok(())
                } else {
                    Err("duplicate name".to_owned())
                }
            });
            if let Err(reason) = checked {
                outcome.warnings.push(format!(
                    "{}: dropped record {index} ({:?}): {reason}",
                    self.path.display(),
                    truncated(&record.parent.info.name),
                ));
                continue;
            }
            outcome.last_seqnum = outcome.last_seqnum.max(record.parent.registered_seqnum);
            outcome.records.push(record);
        }
        outcome
    }

    /// Replaces the state file atomically with `records` and the registry's
    /// `last_seqnum`. Creates the directory if needed. After an error the old
    /// file (or none) is still in place.
    pub fn save(&self, last_seqnum: u64, records: &[StoredRegistration]) -> io::Result<()> {
        let dir = self.dir();
        let contents = serde_json::to_vec_pretty(&FileOut {
            format: FORMAT_NAME,
            version: FORMAT_VERSION,
            last_seqnum,
            registrations: records,
        })
        .map_err(io::Error::other)?;
        let temp_path = dir.join(format!(
            "{}{}-{}",
            self.temp_prefix(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // The directory is made only when it is missing (not a `mkdir` and
        // a `stat` before every save of a register cycle).
        let written = match write_synced(&temp_path, &contents) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).and_then(|()| write_synced(&temp_path, &contents))
            }
            other => other,
        }
        .and_then(|()| fs::rename(&temp_path, &self.path));
        if let Err(err) = written {
            // Best effort: the temp file is garbage either way, and the next
            // load removes it if this fails too.
            let _ = fs::remove_file(&temp_path);
            return Err(err);
        }
        File::open(dir)?.sync_all()
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Temp files are `.<name>.tmp-<pid>-<n>`: hidden, and never the state file.
    fn temp_prefix(&self) -> String {
        format!(".{}.tmp-", self.file_name())
    }

    /// `Ok(None)` if there is no file; `Err(reason)` if it cannot be used.
    fn read_bounded(&self) -> Result<Option<Vec<u8>>, String> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot open: {err}")),
        };
        let metadata = file
            .metadata()
            .map_err(|err| format!("cannot stat: {err}"))?;
        if !metadata.is_file() {
            return Err("not a regular file".to_owned());
        }
        if metadata.len() > MAX_STATE_FILE_BYTES {
            return Err(format!(
                "{} bytes, more than the limit of {MAX_STATE_FILE_BYTES}",
                metadata.len()
            ));
        }
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| format!("cannot read: {err}"))?;
        if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
            return Err(format!(
                "more than the limit of {MAX_STATE_FILE_BYTES} bytes"
            ));
        }
        Ok(Some(bytes))
    }

    fn move_aside(&self, reason: &str, warnings: &mut Vec<String>) {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let base = format!("{}.corrupt-{seconds}", self.file_name());
        let mut aside = self.dir().join(&base);
        let mut attempt = 1;
        while aside.symlink_metadata().is_ok() && attempt < 100 {
            aside = self.dir().join(format!("{base}.{attempt}"));
            attempt += 1;
        }
        match fs::rename(&self.path, &aside) {
            Ok(()) => warnings.push(format!(
                "state file {} unusable ({reason}); moved to {} and starting empty",
                self.path.display(),
                aside.display()
            )),
            Err(err) => warnings.push(format!(
                "state file {} unusable ({reason}); could not move it to {} ({err}); starting empty",
                self.path.display(),
                aside.display()
            )),
        }
    }

    fn remove_stale_temp_files(&self, warnings: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        let prefix = self.temp_prefix();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => warnings.push(format!(
                    "removed {} left over from an interrupted save",
                    path.display()
                )),
                Err(err) => {
                    warnings.push(format!("cannot remove leftover {}: {err}", path.display()))
                }
            }
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn parse_body(bytes: &[u8]) -> Result<FileBodyV1, String> {
    let header: FileHeader =
        serde_json::from_slice(bytes).map_err(|err| format!("not a state file: {err}"))?;
    if header.format != FORMAT_NAME {
        return Err(format!(
            "format {:?}, expected {FORMAT_NAME:?}",
            truncated(&header.format)
        ));
    }
    if header.version != FORMAT_VERSION {
        return Err(format!(
            "format version {}, this build reads {FORMAT_VERSION}",
            header.version
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| format!("malformed: {err}"))
}

/// At most 64 characters of untrusted text, for messages.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Whether `name` is a valid parent name (SPEC §3): 1..=255 bytes of
/// `[A-Za-z0-9:._-]`, not `.` or `..`.
pub fn is_valid_parent_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// Checks a loaded record of a store for `lifetime` against the SPEC bounds.
fn validate_record(parent: &Parent, lifetime: Lifetime) -> Result<(), String> {
    let info = &parent.info;
    if !is_valid_parent_name(&info.name) {
        return Err("invalid name".to_owned());
    }
    if parent.source != Source::Userspace {
        return Err(format!(
            "source {}, expected userspace",
            parent.source.as_str()
        ));
    }
    if parent.lifetime != lifetime {
        return Err(format!(
            "lifetime {}, expected {}",
            parent.lifetime.as_str(),
            lifetime.as_str()
        ));
    }
    if !info.devpath.starts_with('/') {
        return Err("devpath does not start with '/'".to_owned());
    }
    let strings = [
        ("devpath", &info.devpath),
        ("subsystem", &info.subsystem),
        ("driver", &info.driver),
        ("owner", &parent.owner),
    ];
    for (what, value) in strings {
        if value.len() > MAX_STRING_BYTES {
            return Err(format!("{what} longer than {MAX_STRING_BYTES} bytes"));
        }
    }
    if info.types.len() > MAX_TYPES_PER_PARENT {
        return Err(format!("more than {MAX_TYPES_PER_PARENT} types"));
    }
    let mut type_ids = HashSet::new();
    for mdev_type in &info.types {
        if mdev_type.id.is_empty() || mdev_type.device_api.is_empty() {
            return Err("type without id or device API".to_owned());
        }
        let type_strings = [
            &mdev_type.id,
            &mdev_type.name,
            &mdev_type.description,
            &mdev_type.device_api,
        ];
        if type_strings.iter().any(|s| s.len() > MAX_STRING_BYTES) {
            return Err(format!("type string longer than {MAX_STRING_BYTES} bytes"));
        }
        if !type_ids.insert(mdev_type.id.as_str()) {
            return Err(format!("duplicate type id {:?}", truncated(&mdev_type.id)));
        }
        if mdev_type.devices.len() > MAX_STRING_BYTES
            || mdev_type.devices.iter().any(|d| d.len() > MAX_STRING_BYTES)
        {
            return Err("type device list too long".to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn a_save_makes_a_missing_directory_and_fails_where_a_file_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(root.path().join("a/b/owner.json"), Lifetime::Owner);
        store.save(3, &[]).expect("save into a missing directory");
        store.save(4, &[]).expect("save again");
        assert_eq!(store.load().last_seqnum, 4);
        fs::write(root.path().join("file"), "").unwrap();
        let blocked = StateStore::new(root.path().join("file/owner.json"), Lifetime::Owner);
        assert!(blocked.save(1, &[]).is_err());
    }

    #[test]
    fn parent_names() {
        for good in ["a", "0000:00:02.0", "mtty_1-x", &"a".repeat(255)] {
            assert!(is_valid_parent_name(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"a".repeat(256)] {
            assert!(!is_valid_parent_name(bad), "{bad:?}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn default_locations() {
        let dirs =
            StateDirs::resolve(None, None, 0, env(&[("XDG_RUNTIME_DIR", "/run/user/0")])).unwrap();
        let stores = StateStores::new(&dirs);
        assert_eq!(
            stores.owner.path(),
            Path::new("/run/mdevreg/owner-registrations.json")
        );
        assert_eq!(
            stores.persistent.path(),
            Path::new("/var/lib/mdevreg/persistent-registrations.json")
        );
        let stores = StateStores::in_dir(Path::new("/tmp/x"));
        assert_eq!(stores.owner.path().parent(), Some(Path::new("/tmp/x")));
        assert_eq!(stores.persistent.path().parent(), Some(Path::new("/tmp/x")));
        assert_ne!(stores.owner.path(), stores.persistent.path());
        assert!(stores.for_lifetime(Lifetime::Kernel).is_none());
    }

    #[test]
    fn unprivileged_defaults_follow_xdg() {
        let vars = [("XDG_RUNTIME_DIR", "/run/user/1000"), ("HOME", "/home/u")];
        let dirs = StateDirs::resolve(None, None, 1000, env(&vars)).unwrap();
        assert_eq!(dirs.runtime, Path::new("/run/user/1000/mdevreg"));
        assert_eq!(dirs.state, Path::new("/home/u/.local/state/mdevreg"));
        let vars = [
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("XDG_STATE_HOME", "/srv/state"),
            ("HOME", "/home/u"),
        ];
        let dirs = StateDirs::resolve(None, None, 1000, env(&vars)).unwrap();
        assert_eq!(dirs.state, Path::new("/srv/state/mdevreg"));
        // Flags win; relative or empty variables count as unset.
        let dirs = StateDirs::resolve(Some(Path::new("/r")), Some(Path::new("/s")), 1000, env(&[]))
            .unwrap();
        assert_eq!(
            (dirs.runtime.as_path(), dirs.state.as_path()),
            (Path::new("/r"), Path::new("/s"))
        );
        let err =
            StateDirs::resolve(None, None, 1000, env(&[("XDG_RUNTIME_DIR", "rel")])).unwrap_err();
        assert!(err.contains("--runtime-dir"), "{err}");
        let err = StateDirs::resolve(
            None,
            None,
            1000,
            env(&[("XDG_RUNTIME_DIR", "/run/user/1000"), ("HOME", "")]),
        )
        .unwrap_err();
        assert!(err.contains("--state-dir"), "{err}");
    }

    #[test]
    fn temp_files_never_collide_with_the_state_file() {
        let store = StateStore::new(PathBuf::from("/x/state.json"), Lifetime::Owner);
        assert!(store.temp_prefix().starts_with(".state.json.tmp-"));
    }
}
