use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use super::*;

/// A source whose exposition is fixed text.
struct Fixed;

impl ExpositionSource for Fixed {
    fn exposition(&self, format: Format) -> Exposition {
        // The registry part in several chunks, as the cache serves it.
        let registry = RegistryPart::new(
            1,
            vec![
                Bytes::from_static(b"# HELP x_y A gauge\n# TYPE x_y gauge\n"),
                Bytes::from_static(b"x_y{a=\"1\"} 1\n"),
                Bytes::from_static(b"x_y{a=\"2\"} 2\n"),
            ],
        );
        let mut rest = Vec::new();
        if format == Format::OpenMetrics {
            rest.push(Bytes::from_static(b"# EOF\n"));
        }
        Exposition {
            format,
            registry,
            rest,
        }
    }
}

fn start(limits: Limits) -> MetricsListener {
    let listener = MetricsListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    MetricsListener::spawn(listener, Arc::new(Fixed), limits).expect("spawn")
}

/// Sends `request` and reads until the server closes (or 10 s).
fn exchange(listener: &MetricsListener, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn get_metrics_answers_in_the_text_format() {
    let listener = start(Limits::default());
    let reply = exchange(
        &listener,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{reply}"
    );
    // Every chunk, in order, with the total length announced.
    let body = "# HELP x_y A gauge\n# TYPE x_y gauge\nx_y{a=\"1\"} 1\nx_y{a=\"2\"} 2\n";
    assert!(
        reply.contains(&format!("content-length: {}\r\n", body.len())),
        "{reply}"
    );
    assert!(reply.ends_with(&format!("\r\n\r\n{body}")), "{reply}");
    assert_eq!(listener.stats().scrapes.load(Ordering::Relaxed), 1);
}

#[test]
fn openmetrics_when_asked_for() {
    let listener = start(Limits::default());
    let reply = exchange(
        &listener,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,*/*;q=0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{reply}"
    );
    assert!(reply.ends_with("# EOF\n"), "{reply}");
}

#[test]
fn head_has_no_body() {
    let listener = start(Limits::default());
    let reply = exchange(
        &listener,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "{reply}");
}

#[test]
fn other_paths_are_not_found_and_other_methods_not_allowed() {
    let listener = start(Limits::default());
    for path in ["/", "/metrics/", "/metricsx", "/../metrics"] {
        let reply = exchange(
            &listener,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {reply}"
        );
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = exchange(
            &listener,
            format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{method}: {reply}"
        );
        assert!(reply.contains("allow: GET, HEAD\r\n"), "{reply}");
    }
    assert_eq!(listener.stats().scrapes.load(Ordering::Relaxed), 0);
}

#[test]
fn an_oversized_head_is_refused() {
    let listener = start(Limits::default());
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 64 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may close before all of it is written.
    let _ = stream.write_all(&request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431 "),
        "{reply}"
    );
    assert_eq!(listener.stats().scrapes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_request_body_is_refused_and_the_connection_closed() {
    let listener = start(Limits::default());
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\nabc")
        .expect("write");
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    // Closed by the server (not by the client's 20 s timeout), the rest of
    // the body never sent.
    assert!(started.elapsed() < Duration::from_secs(15));
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{reply}"
    );
    assert_eq!(listener.stats().scrapes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_slow_head_is_cut_off() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let listener = start(limits);
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .expect("write");
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    // Closed by the server, well before the client's own 20 s.
    assert!(started.elapsed() < Duration::from_secs(15));
    let reply = String::from_utf8_lossy(&reply);
    assert!(!reply.contains("200 OK"), "{reply}");
}

#[test]
fn connections_over_the_limit_are_closed_and_the_rest_still_served() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let listener = start(limits);
    // Two idle connections hold both slots (the server has accepted them
    // once a third connection is refused).
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(listener.local_addr()).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut extra = TcpStream::connect(listener.local_addr()).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        if matches!(extra.read(&mut byte), Ok(0) | Err(_))
            && listener.stats().refused.load(Ordering::Relaxed) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no connection was refused");
    }
    for stream in &idle {
        let _ = stream.shutdown(Shutdown::Both);
    }
    drop(idle);
    // Slots free again: a scrape succeeds (retry while the server notices
    // the closed connections).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = exchange(
            &listener,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if reply.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
