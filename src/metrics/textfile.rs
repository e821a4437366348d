//! `--metrics-textfile PATH`: the exposition (text format) as a file for
//! node_exporter's textfile collector, which reads every `*.prom` file of
//! its directory on each scrape (Debian:
//! `/var/lib/prometheus/node-exporter/`). The file is replaced atomically
//! (a temporary file in the same directory, then `rename`), so a scrape
//! never reads half a file; it is rewritten only when its content changed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Exposition;

/// Writes expositions to one path, skipping rewrites of the same content.
#[derive(Debug)]
pub struct TextfileWriter {
    path: PathBuf,
    /// The content last written (a hash, not a copy).
    last: Option<u64>,
}

impl TextfileWriter {
    /// A writer for `path`; nothing is written yet. The directory must
    /// exist.
    pub fn new(path: &Path) -> io::Result<TextfileWriter> {
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        if path.file_name().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            ));
        }
        Ok(TextfileWriter {
            path: path.to_path_buf(),
            last: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `exposition` unless it already holds it;
    /// returns whether it wrote.
    pub fn write(&mut self, exposition: &Exposition) -> io::Result<bool> {
        let hash = content_hash(exposition);
        if self.last == Some(hash) {
            return Ok(false);
        }
        write_atomically(&self.path, exposition)?;
        self.last = Some(hash);
        Ok(true)
    }
}

/// The directory of `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn content_hash(exposition: &Exposition) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    for chunk in exposition.chunks() {
        hasher.write(chunk);
    }
    hasher.finish()
}

/// Writes `exposition` to a temporary file next to `path` (a dot file not
/// ending in `.prom`, which the collector ignores) and renames it over
/// `path`. World-readable: node_exporter runs as its own user.
fn write_atomically(path: &Path, exposition: &Exposition) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut temp = tempfile::Builder::new()
        .prefix(".mdevreg-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // The registry part comes as thousands of small chunks: one write
    // per 64 KiB.
    let mut buffered = io::BufWriter::with_capacity(64 * 1024, temp.as_file_mut());
    for chunk in exposition.chunks() {
        buffered.write_all(chunk)?;
    }
    buffered.flush()?;
    drop(buffered);
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::metrics::{Format, RegistryPart};

    fn exposition(text: &'static str) -> Exposition {
        Exposition {
            format: Format::Text,
            registry: RegistryPart::new(
                0,
                vec![
                    Bytes::from_static(text.as_bytes()),
                    Bytes::from_static(b"b 2\n"),
                ],
            ),
            rest: Vec::new(),
        }
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mdevreg.prom");
        let mut writer = TextfileWriter::new(&path).expect("writer");
        assert!(writer.write(&exposition("a 1\n")).expect("write"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "a 1\nb 2\n");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("stat"));

        assert!(!writer.write(&exposition("a 1\n")).expect("write"));
        let same = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("stat"));
        assert_eq!(inode, same, "unchanged content is not rewritten");

        assert!(writer.write(&exposition("a 3\n")).expect("write"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "a 3\nb 2\n");
        // Nothing else is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mdevreg.prom")]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = TextfileWriter::new(Path::new("/nonexistent-mdevreg-dir/x.prom"))
            .expect_err("no such directory");
        assert!(
            err.to_string().contains("/nonexistent-mdevreg-dir"),
            "{err}"
        );
    }
}
