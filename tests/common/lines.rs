//! Lines of a child process's stdout, read on a thread, with bounded waits.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Lines of a child's stdout (or any reader), read on a thread.
pub struct LineReader {
    lines: mpsc::Receiver<String>,
}

impl LineReader {
    pub fn new(stream: impl Read + Send + 'static) -> LineReader {
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { lines }
    }

    /// The next line, if one comes within `timeout`.
    pub fn next_within(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next line within `timeout`, or a panic naming `what`.
    pub fn expect_within(&self, timeout: Duration, what: &str) -> String {
        self.next_within(timeout)
            .unwrap_or_else(|| panic!("no line within {timeout:?}: {what}"))
    }
}
