//! The gRPC API itself, driven by the generated client: event order, statuses
//! decided before anything runs, health.

mod common;

use std::time::Duration;

use common::{Daemon, scratch_dir};
use rexec::{ExecRequest, ExecResponse, exec_response, exit};
use tonic::Code;

async fn client(daemon: &Daemon) -> common::RawClient {
    common::raw_client(&daemon.addr).await
}

async fn collect(
    client: &mut common::RawClient,
    request: ExecRequest,
) -> Result<Vec<ExecResponse>, tonic::Status> {
    let mut stream = client.exec(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

fn shell(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_started_chunks_then_one_exit() {
    let daemon = Daemon::start();
    let mut client = client(&daemon).await;
    let events = collect(&mut client, shell("printf abc; printf de >&2; exit 5"))
        .await
        .unwrap();
    let Some(exec_response::Event::Started(started)) = &events[0].event else {
        panic!("first event: {:?}", events[0])
    };
    assert!(started.pid > 0);
    assert!(!started.exec_id.is_empty());
    let Some(exec_response::Event::Exit(exit)) = &events.last().unwrap().event else {
        panic!("last event is not exit")
    };
    assert_eq!(exit.status, Some(exit::Status::Code(5)));
    assert_eq!((exit.stdout_bytes, exit.stderr_bytes), (3, 2));
    assert!(!exit.timed_out);
    let exits = events
        .iter()
        .filter(|e| matches!(e.event, Some(exec_response::Event::Exit(_))))
        .count();
    assert_eq!(exits, 1);
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(exec_response::Event::Stdout(b)) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stdout, b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_timeout_are_reported_in_exit() {
    let daemon = Daemon::start();
    let mut client = client(&daemon).await;
    let events = collect(&mut client, shell("kill -TERM $$")).await.unwrap();
    let Some(exec_response::Event::Exit(exit)) = &events.last().unwrap().event else {
        panic!()
    };
    assert_eq!(exit.status, Some(exit::Status::Signal("TERM".into())));

    let request = ExecRequest {
        timeout_ms: 300,
        ..shell("sleep 30")
    };
    let started = std::time::Instant::now();
    let events = collect(&mut client, request).await.unwrap();
    let Some(exec_response::Event::Exit(exit)) = &events.last().unwrap().event else {
        panic!()
    };
    assert!(exit.timed_out);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_a_status_and_run_nothing() {
    let daemon = Daemon::start();
    let mut client = client(&daemon).await;
    let dir = scratch_dir("invalid");
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let cases: Vec<(ExecRequest, Code)> = vec![
        (
            ExecRequest {
                argv: vec!["touch".into(), marker.display().to_string()],
                ..shell(&touch)
            },
            Code::InvalidArgument,
        ),
        (ExecRequest::default(), Code::InvalidArgument),
        (shell(&format!("{touch}\0")), Code::InvalidArgument),
        (
            ExecRequest {
                argv: vec!["touch".into(), format!("{}\0", marker.display())],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            ExecRequest {
                cwd: "/no/such/dir".into(),
                ..shell(&touch)
            },
            Code::NotFound,
        ),
        (
            ExecRequest {
                env: [("BAD=NAME".to_string(), "x".to_string())].into(),
                ..shell(&touch)
            },
            Code::InvalidArgument,
        ),
        (
            ExecRequest {
                env: [("".to_string(), "x".to_string())].into(),
                ..shell(&touch)
            },
            Code::InvalidArgument,
        ),
        (
            ExecRequest {
                env: [("OK".to_string(), "a\0b".to_string())].into(),
                ..shell(&touch)
            },
            Code::InvalidArgument,
        ),
        (
            ExecRequest {
                argv: vec!["no-such-program-xyz".into()],
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            ExecRequest {
                argv: vec!["/no/such/program".into()],
                ..Default::default()
            },
            Code::NotFound,
        ),
    ];
    let cases_count = cases.len();
    for (request, code) in cases {
        let described = format!("{request:?}");
        let status = collect(&mut client, request).await.expect_err(&described);
        assert_eq!(status.code(), code, "{described}: {status:?}");
    }
    assert!(!marker.exists(), "an invalid request ran something");
    let log = daemon.log_text();
    assert!(
        !log.contains("\"audit\":\"exec\""),
        "nothing was spawned, so no exec audited"
    );
    assert!(
        log.matches("\"audit\":\"refused\"").count() >= cases_count,
        "every refusal is audited:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_runs_without_a_shell_and_env_is_passed() {
    let daemon = Daemon::start();
    let mut client = client(&daemon).await;
    let request = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo \"$X\" \"$0\"".into(),
            "zero; $(x)".into(),
        ],
        env: [("X".to_string(), "$(not expanded)".to_string())].into(),
        ..Default::default()
    };
    let events = collect(&mut client, request).await.unwrap();
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(exec_response::Event::Stdout(b)) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "$(not expanded) zero; $(x)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_bytes_are_fed_then_closed() {
    let daemon = Daemon::start();
    let mut client = client(&daemon).await;
    let request = ExecRequest {
        stdin: bytes::Bytes::from_static(b"x\0y"),
        ..shell("wc -c")
    };
    let events = collect(&mut client, request).await.unwrap();
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(exec_response::Event::Stdout(b)) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let daemon = Daemon::start();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "rexec.v1.RemoteExec"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}
