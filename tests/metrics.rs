//! `rexecd --metrics-listen`: scraped by a real Prometheus server (the
//! Debian package, which scripts/test-all installs) and read back through
//! its HTTP API; the endpoint attacked as an outsider would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXECD, eventually, output_within, scratch_dir, unique_marker};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "scraper-0123456789abcdef01234567";

/// One HTTP/1.0 request by hand: (status, headers and body as text).
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n"))
}

fn metrics_daemon(extra: &[&str]) -> (Daemon, String) {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_with(&args);
    let addr = daemon
        .metrics_addr
        .clone()
        .expect("readiness line ends with metrics=ADDR");
    (daemon, addr)
}

/// A Prometheus server scraping `target` every second; killed by pid on drop.
struct Prometheus {
    child: Child,
    api: String,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: rexecd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // Prometheus takes no port 0: a port the kernel just gave out and took back.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test-all installs it)");
        Prometheus { child, api }
    }

    /// The instant vector of `query` (a bare metric name), as (labels, value).
    fn query(&self, query: &str) -> Vec<(Value, f64)> {
        // Until Prometheus listens, there is nothing yet.
        if TcpStream::connect(&self.api).is_err() {
            return Vec::new();
        }
        let (status, answer) = get(&self.api, &format!("/api/v1/query?query={query}"));
        if status != 200 {
            return Vec::new();
        }
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let Ok(json) = serde_json::from_str::<Value>(body) else {
            return Vec::new();
        };
        json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sample| {
                let value = sample["value"][1].as_str().and_then(|v| v.parse().ok());
                (sample["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The value of the series of `metric` whose labels include `labels`.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.query(metric)
            .into_iter()
            .find(|(series, _)| labels.iter().all(|(k, v)| series[*k] == *v))
            .map(|(_, value)| value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_prometheus_server_scrapes_what_rexecd_did() {
    let (daemon, metrics) = metrics_daemon(&[]);
    let run = |words: &[&str]| {
        let mut command = daemon.rexec();
        command.args(words);
        output_within(&mut command, b"", LIMIT).status.code()
    };
    assert_eq!(run(&["--", "true"]), Some(0));
    assert_eq!(run(&["--", "echo hi; exit 3"]), Some(3));
    assert_eq!(run(&["--", "kill -9 $$"]), Some(137));
    assert_eq!(run(&["--timeout", "200ms", "--", "sleep 30"]), Some(143));
    let mut wrong = daemon.rexec();
    wrong
        .env("REXEC_TOKEN", "not-the-token")
        .args(["--", "true"]);
    assert_eq!(
        output_within(&mut wrong, b"", LIMIT).status.code(),
        Some(255)
    );

    let prometheus = Prometheus::start(&metrics);
    assert!(
        eventually(LIMIT, || prometheus.value("up", &[("job", "rexecd")])
            == Some(1.0)),
        "Prometheus never scraped rexecd"
    );
    let execs = |result: &str| {
        prometheus.value(
            "rexec_execs_total",
            &[("listener", "grpc"), ("result", result)],
        )
    };
    assert_eq!(execs("exited_zero"), Some(1.0));
    assert_eq!(execs("exited_nonzero"), Some(1.0));
    assert_eq!(execs("signaled"), Some(1.0));
    assert_eq!(execs("timed_out"), Some(1.0));
    assert_eq!(execs("cancelled"), Some(0.0));
    assert_eq!(prometheus.value("rexec_execs_running", &[]), Some(0.0));
    assert_eq!(
        prometheus.value("rexec_exec_duration_seconds_count", &[]),
        Some(4.0)
    );
    assert_eq!(
        prometheus.value("rexec_output_bytes_total", &[("stream", "stdout")]),
        Some(3.0)
    );
    assert_eq!(
        prometheus.value("rexec_rejected_total", &[("reason", "auth")]),
        Some(1.0)
    );
    let handled = |code: &str| {
        prometheus.value(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "rexec.v1.RemoteExec"),
                ("grpc_type", "bidi_stream"),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(handled("OK"), Some(4.0));
    assert_eq!(handled("Unauthenticated"), Some(1.0));
    assert_eq!(
        prometheus.value("grpc_server_started_total", &[("grpc_method", "Session")]),
        Some(5.0)
    );
    assert!(
        prometheus
            .value("grpc_server_handling_seconds_count", &[])
            .is_some()
    );
    assert!(
        prometheus
            .value("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(prometheus.value("process_open_fds", &[]).unwrap_or(0.0) > 0.0);
}

#[test]
fn no_label_carries_a_command_and_the_legacy_listener_is_counted() {
    let (daemon, metrics) =
        metrics_daemon(&["--legacy-listen", "127.0.0.1:0", "--legacy-allow-anonymous"]);
    let marker = unique_marker("metrics-label");
    let mut command = daemon.rexec();
    command.args(["--", &format!("echo {marker}")]);
    assert!(output_within(&mut command, b"", LIMIT).status.success());
    let mut legacy = TcpStream::connect(daemon.legacy_addr.as_ref().unwrap()).unwrap();
    legacy
        .write_all(format!("echo {marker}").as_bytes())
        .unwrap();
    let mut answer = [0u8; 4];
    legacy.read_exact(&mut answer).unwrap();
    drop(legacy);
    // An HTTP request at the legacy port is refused as invalid.
    let mut http_at_legacy = TcpStream::connect(daemon.legacy_addr.as_ref().unwrap()).unwrap();
    http_at_legacy
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = http_at_legacy.read_to_end(&mut Vec::new());

    let text = || get(&metrics, "/metrics").1;
    assert!(eventually(LIMIT, || text().contains(
        r#"rexec_execs_total{listener="legacy",result="exited_zero"} 1"#
    )));
    let text = text();
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    for line in [
        r#"rexec_legacy_connections_total{listener="legacy"} 2"#,
        r#"rexec_legacy_answers_total{kind="output",listener="legacy"} 1"#,
        r#"rexec_rejected_total{reason="invalid"} 1"#,
        r#"rexec_execs_total{listener="grpc",result="exited_zero"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains(&marker), "a command reached a label");
}

#[test]
fn the_metrics_port_answers_only_get_metrics() {
    let (daemon, metrics) = metrics_daemon(&[]);
    assert_eq!(get(&metrics, "/").0, 404);
    assert_eq!(get(&metrics, "/metrics/../debug").0, 404);
    assert_eq!(
        http(
            &metrics,
            "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    // The legacy protocol, gRPC's preface and huge headers: refused, and the
    // port still serves the next scrape.
    let mut framed = TcpStream::connect(&metrics).unwrap();
    framed.set_read_timeout(Some(LIMIT)).unwrap();
    framed
        .write_all(b"\x0f\x00\x00\x00{\"cmd\":\"id\"}")
        .unwrap();
    let mut answer = Vec::new();
    let _ = framed.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
        "{answer:?}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut big = TcpStream::connect(&metrics).unwrap();
    big.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = big.write_all(huge.as_bytes());
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A silent connection is closed (hyper's header read timeout) while others are served.
    let mut silent = TcpStream::connect(&metrics).unwrap();
    silent.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(get(&metrics, "/metrics").0, 200);
    let mut nothing = Vec::new();
    let _ = silent.read_to_end(&mut nothing);
    assert!(nothing.is_empty() || nothing.starts_with(b"HTTP/1.1 408"));
    drop(daemon);
}

#[test]
fn off_loopback_metrics_need_tokens_and_then_every_scrape_sends_one() {
    let output = output_within(
        Command::new(REXECD)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"])
            .stdout(Stdio::piped()),
        b"",
        LIMIT,
    );
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("refusing metrics on non-loopback 0.0.0.0:0")
            && message.contains("--tokens-file"),
        "{message}"
    );

    let dir = scratch_dir("metrics-tokens");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("scraper {TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (daemon, metrics) = metrics_daemon(&["--tokens-file", tokens.to_str().unwrap()]);
    let (status, answer) = get(&metrics, "/metrics");
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let wrong = http(
        &metrics,
        "GET /metrics HTTP/1.0\r\nAuthorization: Bearer nope\r\n\r\n",
    );
    assert_eq!(wrong.0, 401);
    let right = http(
        &metrics,
        &format!("GET /metrics HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    );
    assert_eq!(right.0, 200);
    assert!(right.1.contains("rexec_execs_running 0"));

    // A SIGHUP reload of the tokens file applies to scrapes too.
    const NEXT: &str = "scraper-fedcba9876543210fedcba98";
    std::fs::write(&tokens, format!("scraper {NEXT}\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let scrape = |token: &str| {
        http(
            &metrics,
            &format!("GET /metrics HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"),
        )
        .0
    };
    assert!(eventually(LIMIT, || scrape(NEXT) == 200));
    assert_eq!(scrape(TOKEN), 401);
    assert!(Path::new(&dir).exists());
}
