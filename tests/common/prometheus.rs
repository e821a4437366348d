//! A real Prometheus (Debian's `prometheus`) and node_exporter
//! (`prometheus-node-exporter`) for tests: started on loopback ports with a
//! temporary configuration and storage, queried through the HTTP API with
//! a minimal HTTP/1.0 client, killed on drop. Also `ip link set lo up`,
//! which a fresh network namespace needs before anything listens on
//! 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long Prometheus or node_exporter may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() {
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip link set lo up failed");
}

/// `GET path` on 127.0.0.1:port; returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, response[split + 4..].to_vec()))
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Polls `GET path` until it answers 200; panics after [`START_TIMEOUT`].
fn wait_http_ok(child: &mut Child, what: &str, port: u16, path: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("{what} exited while starting: {status}");
        }
        if matches!(http_get(port, path), Some((200, _))) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not answer {path}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub port: u16,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (YAML) in `dir`, listening on
    /// `port`; waits until it is ready.
    pub fn start(dir: &Path, config: &str, port: u16) -> Prometheus {
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        wait_http_ok(&mut child, "prometheus", port, "/-/ready");
        Prometheus { child, port }
    }

    /// An instant query; returns `data.result` (panics on an API error).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(self.port, &path).expect("query prometheus");
        let reply: Value = serde_json::from_slice(&body).expect("JSON reply");
        assert_eq!(status, 200, "{promql}: {reply}");
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
        reply["data"]["result"]
            .as_array()
            .expect("result array")
            .clone()
    }

    /// A query whose result is one number (or none: `None`).
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        assert!(
            result.len() <= 1,
            "{promql}: more than one series: {result:?}"
        );
        result.first().map(sample_value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one vector sample of a query result.
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

/// A running node_exporter with only the textfile collector.
pub struct NodeExporter {
    child: Child,
    pub port: u16,
}

impl NodeExporter {
    /// Starts it on `port`, reading `*.prom` files in `textfile_dir`.
    pub fn start(textfile_dir: &Path, log_dir: &Path, port: u16) -> NodeExporter {
        let log = fs::File::create(log_dir.join("node-exporter.log")).expect("node_exporter log");
        let mut child = Command::new("prometheus-node-exporter")
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus-node-exporter");
        wait_http_ok(&mut child, "node_exporter", port, "/metrics");
        NodeExporter { child, port }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
