//! go-grpc-prometheus's server metrics (`grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`), counted
//! by a service around each gRPC service: a call starts when its request
//! reaches the service and is handled when its response ends (the status in
//! the trailers, or in the headers of a trailers-only answer). A response
//! dropped before its status (the client went away) is `Canceled`, as gRPC
//! servers record it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use super::get;

/// The methods rexecd serves, as (path, service, method, type). Labels come
/// from here only: a path that is not listed is counted as `unknown`.
const METHODS: [(&str, &str, &str, &str); 8] = [
    (
        "/rexec.v1.RemoteExec/Exec",
        "rexec.v1.RemoteExec",
        "Exec",
        "server_stream",
    ),
    (
        "/rexec.v1.RemoteExec/Session",
        "rexec.v1.RemoteExec",
        "Session",
        "bidi_stream",
    ),
    (
        "/grpc.health.v1.Health/Check",
        "grpc.health.v1.Health",
        "Check",
        "unary",
    ),
    (
        "/rexec.v1.Files/Upload",
        "rexec.v1.Files",
        "Upload",
        "client_stream",
    ),
    (
        "/rexec.v1.Files/Download",
        "rexec.v1.Files",
        "Download",
        "server_stream",
    ),
    (
        "/grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health",
        "Watch",
        "server_stream",
    ),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
];

fn labels(path: &str) -> [&'static str; 3] {
    METHODS.iter().find(|(known, ..)| *known == path).map_or(
        ["unknown", "unknown", "unary"],
        |&(_, service, method, kind)| [service, method, kind],
    )
}

/// The code's name as gRPC's Go implementation prints it (`OK`,
/// `Unauthenticated`), which go-grpc-prometheus dashboards expect.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
}

impl<S> Measured<S> {
    pub fn new(inner: S) -> Self {
        Measured { inner }
    }
}

impl<S: NamedService> NamedService for Measured<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Measured<S>
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
        let mut call = Call {
            labels: labels(request.uri().path()),
            started: Instant::now(),
            code: None,
        };
        get().grpc_started.with_label_values(&call.labels).inc();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            call.code = status_in(response.headers());
            Ok(response.map(|body| tonic::body::Body::new(MeasuredBody { body, call })))
        })
    }
}

/// One call, recorded as handled when dropped: with the body, once it has
/// ended or been given up.
struct Call {
    labels: [&'static str; 3],
    started: Instant,
    code: Option<tonic::Code>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let metrics = get();
        let code = code_name(self.code.unwrap_or(tonic::Code::Cancelled));
        let [service, method, kind] = self.labels;
        metrics
            .grpc_handled
            .with_label_values(&[service, method, kind, code])
            .inc();
        metrics
            .grpc_handling
            .with_label_values(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

struct MeasuredBody<B> {
    body: B,
    call: Call,
}

impl<B: http_body::Body + Unpin> http_body::Body for MeasuredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
        {
            this.call.code = status_in(trailers).or(this.call.code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_name_their_labels() {
        assert_eq!(
            labels("/rexec.v1.RemoteExec/Session"),
            ["rexec.v1.RemoteExec", "Session", "bidi_stream"]
        );
        assert_eq!(
            labels("/rexec.v1.RemoteExec/$(id)"),
            ["unknown", "unknown", "unary"]
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }
}
