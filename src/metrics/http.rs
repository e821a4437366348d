//! `--metrics-listen ADDR:PORT`: a small HTTP/1.1 server that answers
//! `GET /metrics` (and `HEAD`) with the exposition; other paths get 404,
//! other methods 405.
//!
//! HTTP is hyper 1 on tokio, not a hand-written parser: hyper is the
//! ecosystem's well-kept HTTP implementation, already has the cut-offs
//! this needs (header read timeout, head size limits), and its cost is a
//! few hundred KiB of code in the daemon.
//!
//! It runs on a thread of its own with its own single-threaded runtime, so
//! nothing a client does (many connections, slow or oversized requests,
//! slow reads) reaches the daemon's event loop; renderings run on at most
//! [`RENDER_THREADS`] blocking threads, one at a time per change (see
//! [`ExpositionCache`](super::ExpositionCache)). Bounds: at most
//! [`Limits::max_connections`] connections at once (more are closed at
//! once), the request head within [`Limits::header_timeout`] and
//! [`Limits::max_head_bytes`], each connection at most
//! [`Limits::connection_lifetime`] (then closed after its current
//! response, or [`CLOSE_GRACE`] later at the latest). Request bodies are
//! never read: a request with one gets 413 and the connection is closed.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use super::{Exposition, Format, RegistryPart};

/// Blocking threads that may render at the same time.
pub const RENDER_THREADS: usize = 2;
/// How long a connection may stay open past its lifetime to finish the
/// response it is sending.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The path served.
pub const METRICS_PATH: &str = "/metrics";

/// Something that produces the exposition; may block (it renders).
pub trait ExpositionSource: Send + Sync + 'static {
    fn exposition(&self, format: Format) -> Exposition;
}

/// The listener's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_head_bytes: usize,
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 32,
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 8 * 1024,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// What the listener has done, for tests and logs.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    /// Connections closed at once because [`Limits::max_connections`]
    /// were open.
    pub refused: AtomicU64,
    pub scrapes: AtomicU64,
}

/// A running listener; stopped (and its thread joined) on drop.
pub struct MetricsListener {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<ListenerStats>,
}

impl MetricsListener {
    /// Binds `addr` (so a taken port fails the daemon's start, not later).
    pub fn bind(addr: SocketAddr) -> io::Result<StdTcpListener> {
        let listener = StdTcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `source` on `listener` from a new thread.
    pub fn spawn(
        listener: StdTcpListener,
        source: Arc<dyn ExpositionSource>,
        limits: Limits,
    ) -> io::Result<MetricsListener> {
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(RENDER_THREADS)
            .thread_name("mdevreg-metrics")
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let stats = Arc::new(ListenerStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("mdevreg-metrics".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            log::error!("metrics listener: {err}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, source, limits, thread_stats) => {}
                    }
                });
                // Connections still open are dropped; a rendering in
                // progress finishes on its own.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(MetricsListener {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
            stats,
        })
    }

    /// The address it listens on (the port, if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    source: Arc<dyn ExpositionSource>,
    limits: Limits,
    stats: Arc<ListenerStats>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors, say: do not spin.
                log::warn!("metrics listener: accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "metrics listener: {} connections open, closing a new one",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let source = Arc::clone(&source);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            serve_connection(stream, source, limits, stats).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    source: Arc<dyn ExpositionSource>,
    limits: Limits,
    stats: Arc<ListenerStats>,
) {
    let service = hyper::service::service_fn(move |request| {
        answer(request, Arc::clone(&source), Arc::clone(&stats))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_header_size(limits.max_head_bytes)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                log::debug!("metrics listener: connection: {err}");
            }
        }
        () = tokio::time::sleep(limits.connection_lifetime) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    source: Arc<dyn ExpositionSource>,
    stats: Arc<ListenerStats>,
) -> Result<Response<Chunks>, Infallible> {
    if request.uri().path() != METRICS_PATH {
        return Ok(plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"));
    }
    // A body is never read: refuse it and close, rather than leave it in
    // the socket (the client would hold the connection until its lifetime
    // ends).
    if !request.body().is_end_stream() {
        let mut response = plain(StatusCode::PAYLOAD_TOO_LARGE, "no request body expected\n");
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::from_accept(accept);
    let exposition = tokio::task::spawn_blocking(move || source.exposition(format)).await;
    let Ok(exposition) = exposition else {
        return Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering the metrics failed\n",
        ));
    };
    stats.scrapes.fetch_add(1, Ordering::Relaxed);
    let content_type = HeaderValue::from_static(exposition.format.content_type());
    let mut response = Response::new(Chunks::new(exposition));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    Ok(response)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Chunks> {
    let body = Exposition {
        format: Format::Text,
        registry: RegistryPart::new(0, Vec::new()),
        rest: vec![Bytes::from_static(text.as_bytes())],
    };
    let mut response = Response::new(Chunks::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body of ready chunks, sent one frame each (the registry
/// part's chunks are shared, not copied, between responses).
pub struct Chunks {
    exposition: Exposition,
    next: usize,
    remaining: u64,
}

impl Chunks {
    fn new(exposition: Exposition) -> Chunks {
        Chunks {
            remaining: exposition.len() as u64,
            exposition,
            next: 0,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = self.exposition.chunk(self.next).cloned();
        if let Some(chunk) = &chunk {
            self.next += 1;
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests;
