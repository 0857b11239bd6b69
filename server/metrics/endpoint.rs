//! `--metrics-listen ADDR`: `GET /metrics` over HTTP/1.1 (hyper), what a
//! Prometheus server scrapes. Anything else is 404 (other paths) or 405
//! (other methods); a request whose headers do not arrive within
//! `HEADER_TIMEOUT` is closed and each connection serves one scrape, so
//! silent connections hold a slot for 10 s at most. Beside
//! `--tokens-file` a scrape needs `Authorization: Bearer TOKEN` (any token
//! of the file), else 401.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a presented bearer token is one of the tokens file's.
pub type Verifier = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

pub struct Endpoint {
    listener: TcpListener,
    verifier: Option<Verifier>,
}

impl Endpoint {
    pub async fn bind(addr: SocketAddr, verifier: Option<Verifier>) -> std::io::Result<Endpoint> {
        Ok(Endpoint {
            listener: TcpListener::bind(addr).await?,
            verifier,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until rexecd starts draining.
    pub async fn run(self, shutdown: Shutdown) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                () = shutdown.draining() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.draining() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let verifier = self.verifier.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let verifier = verifier.clone();
                    async move { Ok::<_, Infallible>(answer(&request, verifier.as_ref())) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    // One scrape a connection: an idle kept-alive connection
                    // would hold a slot with no header timeout running.
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, "metrics: connection ended: {e}");
                }
                drop(permit);
            });
        }
    }
}

fn answer(request: &Request<Incoming>, verifier: Option<&Verifier>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response.headers_mut().insert(
            hyper::header::ALLOW,
            "GET, HEAD".parse().expect("valid header"),
        );
        return response;
    }
    if let Some(verifier) = verifier {
        let presented = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        if !presented.is_some_and(|token| verifier(token)) {
            let mut response = reply(
                StatusCode::UNAUTHORIZED,
                "a bearer token from rexecd's --tokens-file is required\n".into(),
            );
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("valid header"),
            );
            return response;
        }
    }
    let mut response = reply(StatusCode::OK, super::get().render());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        TEXT_FORMAT.parse().expect("valid header"),
    );
    response
}
