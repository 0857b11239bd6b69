//! Limits that keep one client from taking the daemon down: execs running at
//! once, output per exec, argv and environment size, and the status an
//! oversized request gets (gRPC connections: `connections.rs`). Each answers
//! at once, never queues.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::audit::Audit;
use crate::auth::Principal;

use crate::runner::types::RunError;

/// Longest single argument or `NAME=VALUE` the kernel passes to a program
/// (MAX_ARG_STRLEN); past it exec fails with E2BIG.
const MAX_ARG_BYTES: usize = 128 * 1024;
/// Total argv and environment one exec may ask for, well under ARG_MAX.
const MAX_ARGV_ENV_BYTES: usize = 1024 * 1024;
/// Environment variables one exec may set.
const MAX_ENV_VARS: usize = 4096;

/// `--max-concurrent`: execs running at once, both listeners together. A
/// permit is held by the exec's supervisor until the process group is reaped.
#[derive(Clone)]
pub struct ExecSlots {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl ExecSlots {
    pub fn new(max: usize) -> Self {
        ExecSlots {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot now, or RESOURCE_EXHAUSTED: a full server answers, it never queues.
    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, RunError> {
        self.semaphore.clone().try_acquire_owned().map_err(|_| {
            RunError::ResourceExhausted(format!(
                "too many commands and transfers running: the server allows {} at once (rexecd --max-concurrent)",
                self.max
            ))
        })
    }
}

/// `--max-output`: bytes of stdout and stderr together that one exec may
/// send. Past it the rest is not sent and the supervisor kills the group.
pub struct OutputBudget {
    limit: Option<u64>,
    used: AtomicU64,
    exceeded: CancellationToken,
}

impl OutputBudget {
    /// `None`: no limit.
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(OutputBudget {
            limit,
            used: AtomicU64::new(0),
            exceeded: CancellationToken::new(),
        })
    }

    /// How many of `n` new bytes may be sent; fewer than `n` marks the exec truncated.
    pub fn take(&self, n: usize) -> usize {
        let Some(limit) = self.limit else { return n };
        let wanted = n as u64;
        let before = self.used.fetch_add(wanted, Ordering::Relaxed);
        let allowed = limit.saturating_sub(before).min(wanted);
        if allowed < wanted {
            self.exceeded.cancel();
        }
        allowed as usize
    }

    /// Resolves once output went past the limit.
    pub async fn exceeded(&self) {
        self.exceeded.cancelled().await
    }

    pub fn is_exceeded(&self) -> bool {
        self.exceeded.is_cancelled()
    }
}

/// Refuses argv and environments the kernel would refuse at exec (E2BIG), with
/// a message that says which limit, before anything is spawned.
pub fn check_exec_size(args: &[String], env: &[(String, String)]) -> Result<(), RunError> {
    if env.len() > MAX_ENV_VARS {
        return Err(RunError::InvalidArgument(format!(
            "{} environment variables: at most {MAX_ENV_VARS} are allowed",
            env.len()
        )));
    }
    let mut total = 0usize;
    for arg in args {
        if arg.len() > MAX_ARG_BYTES {
            return Err(RunError::InvalidArgument(format!(
                "an argument or command of {} bytes is over the kernel's limit of {MAX_ARG_BYTES} bytes; \
                 send long scripts as stdin (sh -s)",
                arg.len()
            )));
        }
        total += arg.len() + 1;
    }
    for (name, value) in env {
        let entry = name.len() + 1 + value.len();
        if entry > MAX_ARG_BYTES {
            return Err(RunError::InvalidArgument(format!(
                "environment variable {} is {entry} bytes, over the kernel's limit of {MAX_ARG_BYTES} bytes",
                name.chars().take(64).collect::<String>()
            )));
        }
        total += entry + 1;
    }
    if total > MAX_ARGV_ENV_BYTES {
        return Err(RunError::InvalidArgument(format!(
            "argv and environment total {total} bytes, over the limit of {MAX_ARGV_ENV_BYTES} bytes"
        )));
    }
    Ok(())
}

/// tonic answers a request message over `--max-request-size` with
/// OUT_OF_RANGE; gRPC's convention (and the contract, docs/ARCHITECTURE.md) is RESOURCE_EXHAUSTED.
pub fn request_too_large(status: &tonic::Status) -> Option<tonic::Status> {
    (status.code() == tonic::Code::OutOfRange && is_size_message(status.message()))
        .then(|| tonic::Status::resource_exhausted(status.message()))
}

fn is_size_message(message: &str) -> bool {
    message.contains("message length too large")
}

/// Wraps a gRPC service so that a request over the size limit, refused by
/// tonic before the handler runs, reads RESOURCE_EXHAUSTED and is audited.
#[derive(Clone)]
pub struct RequestSizeStatus<S> {
    inner: S,
    audit: Audit,
}

impl<S> RequestSizeStatus<S> {
    pub fn new(inner: S, audit: Audit) -> Self {
        RequestSizeStatus { inner, audit }
    }
}

impl<S: NamedService> NamedService for RequestSizeStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestSizeStatus<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<ResBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let peer = crate::connections::request_peer(&request)
            .map_or_else(|| "unknown".into(), |a| a.to_string());
        let principal = request
            .extensions()
            .get::<Principal>()
            .map_or_else(|| "anonymous".into(), |p| p.0.clone());
        let audit = self.audit.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // A status answered before any message keeps its `Status` here.
            let replaced = response
                .extensions()
                .get::<tonic::Status>()
                .and_then(request_too_large);
            if let Some(status) = replaced
                && status.add_header(response.headers_mut()).is_ok()
            {
                audit.refused(&peer, &principal, "grpc", &status);
                response.extensions_mut().insert(status);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_budget_cuts_at_the_limit_and_marks_it() {
        let budget = OutputBudget::new(Some(10));
        assert_eq!(budget.take(6), 6);
        assert!(!budget.is_exceeded());
        assert_eq!(budget.take(4), 4);
        assert!(!budget.is_exceeded(), "exactly the limit is not truncation");
        assert_eq!(budget.take(1), 0);
        assert!(budget.is_exceeded());
        let unlimited = OutputBudget::new(None);
        assert_eq!(unlimited.take(usize::MAX / 2), usize::MAX / 2);
        assert!(!unlimited.is_exceeded());
    }

    #[test]
    fn exec_slots_refuse_at_once_when_full() {
        let slots = ExecSlots::new(1);
        let held = slots.try_acquire().unwrap();
        assert!(matches!(
            slots.try_acquire(),
            Err(RunError::ResourceExhausted(_))
        ));
        drop(held);
        assert!(slots.try_acquire().is_ok());
    }

    #[test]
    fn oversized_arguments_and_environments_are_refused() {
        assert!(check_exec_size(&["-c".into(), "true".into()], &[]).is_ok());
        let huge = "x".repeat(MAX_ARG_BYTES + 1);
        assert!(check_exec_size(std::slice::from_ref(&huge), &[]).is_err());
        assert!(check_exec_size(&[], &[("A".into(), huge)]).is_err());
        let many: Vec<(String, String)> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(check_exec_size(&[], &many).is_err());
        let big = "y".repeat(MAX_ARG_BYTES - 10);
        let env: Vec<(String, String)> = (0..9).map(|i| (format!("B{i}"), big.clone())).collect();
        assert!(check_exec_size(&[], &env).is_err());
    }
}
