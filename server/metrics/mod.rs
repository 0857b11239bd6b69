//! What rexecd counts, for `--metrics-listen` (Prometheus text format).
//!
//! - `mod.rs`: the metrics, one registry for the process, and how events
//!   become label values. Labels take values from fixed sets only (listener
//!   names, results, reasons, gRPC codes and known methods), never a command,
//!   user or host name, so what a client sends cannot grow the series.
//! - `grpc.rs`: the go-grpc-prometheus server metrics, as a tower service
//!   around each gRPC service.
//! - `process.rs`: the standard `process_*` metrics, read from /proc.
//! - `endpoint.rs`: `GET /metrics` over HTTP/1.1.

mod endpoint;
mod grpc;
mod process;

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::runner::types::{ExitReport, Stop, Termination};

pub use endpoint::{Endpoint, Verifier};
pub use grpc::Measured;

/// Exec and call durations: from a `true` (a few ms) to a long job (an hour).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

pub struct Metrics {
    registry: Registry,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_handling: HistogramVec,
    execs_running: IntGauge,
    execs: IntCounterVec,
    exec_duration: Histogram,
    output_bytes: IntCounterVec,
    rejected: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    legacy_connections: IntCounterVec,
    legacy_open: IntGaugeVec,
    legacy_answers: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics; counting starts at the first use.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let grpc_labels = ["grpc_service", "grpc_method", "grpc_type"];
        let grpc_started = counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &grpc_labels,
        );
        let grpc_handled = counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
        );
        let grpc_handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &grpc_labels,
        )
        .expect("valid metric");
        let execs_running =
            IntGauge::new("rexec_execs_running", "Execs running now, every listener.")
                .expect("valid metric");
        let execs = counter(
            "rexec_execs_total",
            "Execs that ended, by listener and how they ended (exited_zero, exited_nonzero, \
             signaled, timed_out, cancelled).",
            &["listener", "result"],
        );
        let exec_duration = Histogram::with_opts(
            HistogramOpts::new(
                "rexec_exec_duration_seconds",
                "How long execs ran, from spawn to the end of their process group.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let output_bytes = counter(
            "rexec_output_bytes_total",
            "Bytes execs wrote, by stream (stdout, stderr).",
            &["stream"],
        );
        let rejected = counter(
            "rexec_rejected_total",
            "Requests refused before anything ran, by reason (auth, limit, invalid, shutting_down).",
            &["reason"],
        );
        let tls_handshake_failures = IntCounter::new(
            "rexec_tls_handshake_failures_total",
            "TLS handshakes refused or not finished in time.",
        )
        .expect("valid metric");
        let legacy_connections = counter(
            "rexec_legacy_connections_total",
            "Connections accepted by the legacy listeners (udp: datagrams), by listener.",
            &["listener"],
        );
        let legacy_open = IntGaugeVec::new(
            Opts::new(
                "rexec_legacy_connections_open",
                "Legacy connections open now, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let legacy_answers = counter(
            "rexec_legacy_answers_total",
            "Answers sent by the legacy listeners, by listener and kind (output: a command's; \
             error: a refusal).",
            &["listener", "kind"],
        );
        for metric in [
            Box::new(grpc_handling.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(execs_running.clone()),
            Box::new(exec_duration.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(legacy_open.clone()),
            Box::new(process::Collector::new()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        // Known label values start at 0, so a rate() or an alert sees the
        // series before the first event.
        for reason in [
            Rejection::Auth,
            Rejection::Limit,
            Rejection::Invalid,
            Rejection::ShuttingDown,
        ] {
            rejected.with_label_values(&[reason.as_str()]);
        }
        for stream in ["stdout", "stderr"] {
            output_bytes.with_label_values(&[stream]);
        }
        for result in [
            "exited_zero",
            "exited_nonzero",
            "signaled",
            "timed_out",
            "cancelled",
        ] {
            execs.with_label_values(&["grpc", result]);
        }
        Metrics {
            registry,
            grpc_started,
            grpc_handled,
            grpc_handling,
            execs_running,
            execs,
            exec_duration,
            output_bytes,
            rejected,
            tls_handshake_failures,
            legacy_connections,
            legacy_open,
            legacy_answers,
        }
    }

    /// Every metric, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# cannot encode the metrics: {e}\n"))
    }

    /// An exec ended (the audit line's moment).
    /// An exec was spawned; `exec_finished` ends it.
    pub fn exec_started(&self) {
        self.execs_running.inc();
    }

    pub fn exec_finished(&self, listener: &str, report: &ExitReport) {
        self.execs_running.dec();
        self.execs
            .with_label_values(&[listener, result(report)])
            .inc();
        self.exec_duration.observe(report.duration.as_secs_f64());
        self.output_bytes
            .with_label_values(&["stdout"])
            .inc_by(report.stdout_bytes);
        self.output_bytes
            .with_label_values(&["stderr"])
            .inc_by(report.stderr_bytes);
    }

    pub fn rejected(&self, reason: Rejection) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// A legacy connection opened; it counts as open until the guard drops.
    pub fn legacy_connection(&self, listener: &'static str) -> LegacyOpen {
        self.legacy_connections.with_label_values(&[listener]).inc();
        let open = self.legacy_open.with_label_values(&[listener]);
        open.inc();
        LegacyOpen(open)
    }

    pub fn legacy_answer(&self, listener: &str, refusal: bool) {
        let kind = if refusal { "error" } else { "output" };
        self.legacy_answers
            .with_label_values(&[listener, kind])
            .inc();
    }
}

/// Keeps one legacy connection counted as open.
pub struct LegacyOpen(IntGauge);

impl Drop for LegacyOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How an exec ended, as `rexec_execs_total`'s `result`.
fn result(report: &ExitReport) -> &'static str {
    match (report.stopped_by, report.termination) {
        (Some(Stop::Timeout | Stop::Deadline), _) => "timed_out",
        (Some(Stop::ClientGone | Stop::Shutdown), _) => "cancelled",
        (_, Termination::Code(0)) => "exited_zero",
        (_, Termination::Code(_)) => "exited_nonzero",
        (_, Termination::Signal(_)) => "signaled",
    }
}

/// Why a request was refused before anything ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No credential, a wrong one, or one not allowed this.
    Auth,
    /// A limit: connections, concurrent execs, sizes, the memory budget.
    Limit,
    /// A request that is not one: bad fields, bad framing, HTTP at a legacy port.
    Invalid,
    /// rexecd is draining.
    ShuttingDown,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Auth => "auth",
            Rejection::Limit => "limit",
            Rejection::Invalid => "invalid",
            Rejection::ShuttingDown => "shutting_down",
        }
    }

    /// The reason a refusal's gRPC status stands for.
    pub fn of(code: tonic::Code) -> Rejection {
        match code {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Rejection::Auth,
            tonic::Code::ResourceExhausted => Rejection::Limit,
            tonic::Code::Unavailable => Rejection::ShuttingDown,
            _ => Rejection::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(termination: Termination, stopped_by: Option<Stop>) -> ExitReport {
        ExitReport {
            termination,
            stopped_by,
            duration: Duration::from_millis(3),
            stdout_bytes: 5,
            stderr_bytes: 2,
            truncated: false,
            cpu: Default::default(),
        }
    }

    #[test]
    fn results_name_how_an_exec_ended() {
        assert_eq!(result(&report(Termination::Code(0), None)), "exited_zero");
        assert_eq!(
            result(&report(Termination::Code(3), None)),
            "exited_nonzero"
        );
        assert_eq!(result(&report(Termination::Signal(9), None)), "signaled");
        let killed = Termination::Signal(15);
        assert_eq!(result(&report(killed, Some(Stop::Timeout))), "timed_out");
        assert_eq!(result(&report(killed, Some(Stop::Deadline))), "timed_out");
        assert_eq!(result(&report(killed, Some(Stop::ClientGone))), "cancelled");
        assert_eq!(result(&report(killed, Some(Stop::OutputLimit))), "signaled");
    }

    #[test]
    fn the_text_format_carries_the_counts() {
        let metrics = Metrics::new();
        metrics.exec_finished("grpc", &report(Termination::Code(3), None));
        metrics.rejected(Rejection::of(tonic::Code::Unauthenticated));
        let text = metrics.render();
        for line in [
            r#"rexec_execs_total{listener="grpc",result="exited_nonzero"} 1"#,
            r#"rexec_output_bytes_total{stream="stdout"} 5"#,
            r#"rexec_rejected_total{reason="auth"} 1"#,
            "rexec_exec_duration_seconds_count 1",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
