//! gRPC connections and what an unauthenticated one may cost, after
//! OpenSSH's LoginGraceTime and MaxStartups. A connection must send the
//! HTTP/2 preface within `PREFACE_TIMEOUT`; until one of its calls is
//! authenticated it may sit without an open stream for `UNAUTHENTICATED_IDLE`
//! only, and when `--max-unauthenticated` of them are open (or
//! `--max-connections` in all) the oldest is closed to make room, so silent
//! sockets can never lock a real client out. Once authenticated, a connection
//! lives until it has had no stream for `--idle-timeout`.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::rate_limited::RateLimited;

/// Time from accept to the 24-byte HTTP/2 preface (or a TLS hello).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an unauthenticated connection may have no open stream.
pub const UNAUTHENTICATED_IDLE: Duration = Duration::from_secs(10);
const PREFACE_LEN: u64 = 24;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `--max-connections`: open at once, authenticated or not.
    pub max_connections: usize,
    /// `--max-unauthenticated`: open at once before a first authenticated call.
    pub max_unauthenticated: usize,
    /// `--idle-timeout`: an authenticated connection with no stream for this
    /// long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Every open gRPC connection, by age and by peer address.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    limits: ConnectionLimits,
    table: Mutex<Table>,
    refused: Mutex<RateLimited>,
    evicted: Mutex<RateLimited>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<State>>,
    by_peer: HashMap<SocketAddr, u64>,
    /// Ids of connections not yet authenticated; the smallest is the oldest.
    unauthenticated: BTreeSet<u64>,
}

struct State {
    id: u64,
    peer: Option<SocketAddr>,
    opened: Instant,
    streams: AtomicUsize,
    authenticated: AtomicBool,
    idle_since: Mutex<Instant>,
    evicted: CancellationToken,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Self {
        Connections {
            shared: Arc::new(Shared {
                limits,
                table: Mutex::new(Table::default()),
                refused: Mutex::new(RateLimited::new(1)),
                evicted: Mutex::new(RateLimited::new(1)),
            }),
        }
    }

    /// A slot for a new connection: the oldest unauthenticated one is closed
    /// when either cap is reached; with none to close, the new one is refused.
    pub fn admit(&self, stream: TcpStream) -> Option<GrpcConnection> {
        let limits = self.shared.limits;
        let peer = stream.peer_addr().ok();
        let now = Instant::now();
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        let full = table.open.len() >= limits.max_connections;
        if full || table.unauthenticated.len() >= limits.max_unauthenticated {
            match table.unauthenticated.pop_first() {
                Some(oldest) => {
                    if let Some(state) = table.open.remove(&oldest) {
                        if let Some(peer) = state.peer {
                            table.by_peer.remove(&peer);
                        }
                        state.evicted.cancel();
                    }
                    if let Some(count) = lock(&self.shared.evicted).hit() {
                        tracing::warn!(
                            count,
                            "closed the oldest unauthenticated connection to make room, {count} \
                             time(s) in the last {}s (rexecd --max-unauthenticated {}, \
                             --max-connections {})",
                            RateLimited::INTERVAL.as_secs(),
                            limits.max_unauthenticated,
                            limits.max_connections
                        );
                    }
                }
                None if full => {
                    drop(table);
                    if let Some(count) = lock(&self.shared.refused).hit() {
                        tracing::warn!(
                            count,
                            "refused {count} connection(s) in the last {}s: {} open, all \
                             authenticated (rexecd --max-connections)",
                            RateLimited::INTERVAL.as_secs(),
                            limits.max_connections
                        );
                    }
                    return None;
                }
                None => {}
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(State {
            id,
            peer,
            opened: now,
            streams: AtomicUsize::new(0),
            authenticated: AtomicBool::new(false),
            idle_since: Mutex::new(now),
            evicted: CancellationToken::new(),
        });
        table.open.insert(id, state.clone());
        if let Some(peer) = peer {
            table.by_peer.insert(peer, id);
        }
        table.unauthenticated.insert(id);
        drop(table);
        Some(GrpcConnection {
            stream,
            evicted: Box::pin(state.evicted.clone().cancelled_owned()),
            timer: Box::pin(tokio::time::sleep_until(now + PREFACE_TIMEOUT)),
            bytes_read: 0,
            state,
            connections: self.clone(),
        })
    }

    /// `incoming` with each connection admitted (or refused) as it arrives.
    pub fn admitted<S>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = io::Result<GrpcConnection>> + use<S>
    where
        S: Stream<Item = io::Result<TcpStream>>,
    {
        let connections = self.clone();
        incoming.filter_map(move |accepted| match accepted {
            Err(e) => Some(Err(e)),
            Ok(stream) => connections.admit(stream).map(Ok),
        })
    }

    /// The connection of `peer` made an authenticated call: it is no longer
    /// one that may be closed to make room, and gets `--idle-timeout`.
    pub fn authenticated(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&id) = table.by_peer.get(&peer) else {
            return;
        };
        if table.unauthenticated.remove(&id)
            && let Some(state) = table.open.get(&id)
        {
            state.authenticated.store(true, Ordering::Relaxed);
        }
    }

    fn stream_opened(&self, peer: Option<SocketAddr>) -> Option<StreamGuard> {
        let table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        let state = table.open.get(table.by_peer.get(&peer?)?)?.clone();
        state.streams.fetch_add(1, Ordering::Relaxed);
        Some(StreamGuard { state })
    }

    fn closed(&self, state: &State) {
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.open.remove(&state.id).is_some() {
            table.unauthenticated.remove(&state.id);
            if let Some(peer) = state.peer
                && table.by_peer.get(&peer) == Some(&state.id)
            {
                table.by_peer.remove(&peer);
            }
        }
    }

    /// When a connection that has stopped reading must be closed, or the
    /// next time to look again.
    fn deadline(&self, state: &State, bytes_read: u64, now: Instant) -> Result<Instant, String> {
        if bytes_read < PREFACE_LEN {
            let deadline = state.opened + PREFACE_TIMEOUT;
            return if now >= deadline {
                Err(format!(
                    "no HTTP/2 preface within {}s",
                    PREFACE_TIMEOUT.as_secs()
                ))
            } else {
                Ok(deadline)
            };
        }
        let authenticated = state.authenticated.load(Ordering::Relaxed);
        let idle = if authenticated {
            match self.shared.limits.idle_timeout {
                Some(idle) => idle,
                None => return Ok(now + Duration::from_secs(3600)),
            }
        } else {
            UNAUTHENTICATED_IDLE
        };
        if state.streams.load(Ordering::Relaxed) > 0 {
            // Looked at again soon after the last stream may have ended.
            return Ok(now + (idle / 4).max(Duration::from_secs(1)));
        }
        let deadline = *lock(&state.idle_since) + idle;
        if now < deadline {
            return Ok(deadline);
        }
        Err(if authenticated {
            format!("no call for {idle:?} (rexecd --idle-timeout)")
        } else {
            format!("no authenticated call within {idle:?}")
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held for as long as a call's response is being sent.
struct StreamGuard {
    state: Arc<State>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.state.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            *lock(&self.state.idle_since) = Instant::now();
        }
    }
}

/// An accepted TCP connection that gives up its slot when it closes, and
/// closes itself (a read error hyper acts on) when its time is up.
pub struct GrpcConnection {
    stream: TcpStream,
    state: Arc<State>,
    connections: Connections,
    bytes_read: u64,
    timer: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl GrpcConnection {
    pub fn peer(&self) -> String {
        self.state
            .peer
            .map_or_else(|| "unknown".into(), |p| p.to_string())
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            ));
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            match self
                .connections
                .deadline(&self.state, self.bytes_read, Instant::now())
            {
                Ok(next) => self.timer.as_mut().reset(next),
                Err(reason) => {
                    let peer = self.peer();
                    tracing::debug!(%peer, "closing gRPC connection: {reason}");
                    return Some(io::Error::new(io::ErrorKind::TimedOut, reason));
                }
            }
        }
        None
    }
}

impl Drop for GrpcConnection {
    fn drop(&mut self) {
        self.connections.closed(&self.state);
    }
}

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            self.bytes_read += (buf.filled().len() - before) as u64;
        }
        read
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The peer of a request, over plain TCP or TLS.
pub fn request_peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// Wraps a gRPC service so that each call counts as an open stream of its
/// connection until its response body is done.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    connections: Connections,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, connections: &Connections) -> Self {
        Tracked {
            inner,
            connections: connections.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Tracked<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Tracked<S>
where
    S: Service<
            http::Request<ReqBody>,
            Response = http::Response<ResBody>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = self.connections.stream_opened(request_peer(&request));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its stream counted until it is dropped.
struct GuardedBody<B> {
    body: B,
    _guard: Option<StreamGuard>,
}

impl<B: http_body::Body + Unpin> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
