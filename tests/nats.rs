//! rexecd as a NATS agent, against a real nats-server on loopback: discovery
//! by name and labels, missing agents named, broker restarts survived, an
//! unreachable broker leaving gRPC serving, and garbage on the subjects.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::broker::{Broker, agent, free_port, runtime};
use common::{Daemon, REXEC, eventually};

fn discover(url: &str, nodeset: Option<&str>, timeout: &str) -> std::process::Output {
    let mut command = Command::new(REXEC);
    command.args(["--nats", url, "--connect-timeout", timeout, "--discover"]);
    command.args(nodeset);
    command.stdin(Stdio::null()).output().expect("run rexec")
}

fn names(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn twenty_agents_are_discovered_by_name_with_labels() {
    let broker = Broker::start();
    let agents: Vec<Daemon> = (1..=20)
        .map(|n| {
            let index = format!("index={n}");
            agent(
                &broker.url(),
                &format!("web{n:02}"),
                &["--nats-label", "role=web", "--nats-label", &index],
            )
        })
        .collect();
    let expected: Vec<String> = (1..=20).map(|n| format!("web{n:02}")).collect();

    let by_set = discover(&broker.url(), Some("web[01-20]"), "10s");
    assert_eq!(by_set.status.code(), Some(0), "{by_set:?}");
    assert_eq!(names(&by_set), expected);
    let text = String::from_utf8_lossy(&by_set.stdout);
    for (n, line) in (1..=20).zip(text.lines()) {
        assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
        assert!(line.ends_with(&format!("index={n} role=web")), "{line}");
    }

    let everyone = discover(&broker.url(), None, "10s");
    assert_eq!(everyone.status.code(), Some(0), "{everyone:?}");
    assert_eq!(names(&everyone), expected);
    drop(agents);
}

#[test]
fn a_nodeset_with_a_missing_agent_names_it_and_exits_255() {
    let broker = Broker::start();
    let _agents = [
        agent(&broker.url(), "db1", &[]),
        agent(&broker.url(), "db2", &[]),
    ];
    let output = discover(&broker.url(), Some("db[1-3]"), "1s");
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    assert_eq!(names(&output), ["db1", "db2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not responding") && stderr.contains("db3"),
        "{stderr}"
    );
}

#[test]
fn agents_answer_discovery_again_after_the_broker_restarts() {
    let broker = Broker::start();
    let url = broker.url();
    let port = broker.port;
    let agents = [
        agent(&url, "r1", &["--insecure-no-auth"]),
        agent(&url, "r2", &["--insecure-no-auth"]),
        agent(&url, "r3", &["--insecure-no-auth"]),
    ];
    assert_eq!(discover(&url, Some("r[1-3]"), "5s").status.code(), Some(0));

    drop(broker);
    assert!(
        eventually(Duration::from_secs(10), || agents
            .iter()
            .all(|a| a.log_text().contains("nats: disconnected"))),
        "agents did not notice the broker going away"
    );
    let _broker = Broker::start_on(port);
    let mut last = None;
    let answered = eventually(Duration::from_secs(20), || {
        let output = discover(&url, Some("r[1-3]"), "1s");
        let ok = output.status.code() == Some(0);
        last = Some(output);
        ok
    });
    assert!(answered, "agents did not come back: {last:?}");
    let exec = Command::new(REXEC)
        .args(["--nats", &url, "-w", "r[1-3]", "--", "echo back"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(0), "{exec:?}");
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout)
            .matches("| back")
            .count(),
        3
    );
    for agent in &agents {
        let log = agent.log_text();
        let after = log.rsplit("nats: disconnected").next().unwrap_or_default();
        assert!(after.contains("nats: connected"), "{log}");
    }
}

#[test]
fn an_unreachable_broker_leaves_grpc_serving_and_says_so() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let daemon = agent(&url, "lonely", &[]);
    assert!(
        daemon.log_text().contains("broker unreachable"),
        "{}",
        daemon.log_text()
    );

    let output = daemon
        .rexec()
        .args(["--", "echo", "still here"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "still here\n");

    // The broker that shows up later is found without a restart.
    let broker = Broker::start_on(port);
    let mut last = None;
    let found = eventually(Duration::from_secs(20), || {
        let output = discover(&broker.url(), Some("lonely"), "1s");
        let ok = output.status.code() == Some(0);
        last = Some(output);
        ok
    });
    assert!(found, "agent never joined the broker: {last:?}");
}

#[test]
fn garbage_on_the_discover_subject_does_not_crash_agents() {
    let broker = Broker::start();
    let mut daemon = agent(&broker.url(), "sturdy", &[]);
    runtime().block_on(async {
        let client = async_nats::connect(broker.url()).await.unwrap();
        let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 + 13) as u8).collect();
        for _ in 0..50 {
            client
                .publish("rexec.v1.discover", garbage.clone().into())
                .await
                .unwrap();
            client
                .publish_with_reply(
                    "rexec.v1.discover",
                    "nobody.listens",
                    garbage.clone().into(),
                )
                .await
                .unwrap();
        }
        client
            .publish("rexec.v1.discover", "".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    assert!(
        daemon.wait_exit(Duration::from_millis(300)).is_none(),
        "agent died"
    );
    let output = discover(&broker.url(), Some("sturdy"), "5s");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(names(&output), ["sturdy"]);
}

#[test]
fn bad_nats_flags_are_refused_clearly() {
    for (args, expected) in [
        (
            vec!["--nats", "nats://127.0.0.1:1", "--nats-name", "a.b"],
            "one NATS subject token",
        ),
        (
            vec!["--nats", "nats://127.0.0.1:1", "--nats-label", "nokey"],
            "expected KEY=VALUE",
        ),
        (vec!["--nats", ""], "expected a NATS address"),
        (vec!["--nats-name", "x"], "--nats"),
    ] {
        let output = Command::new(common::REXECD)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl.
fn broker_certificates(dir: &std::path::Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=nats-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out req.pem -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > ext
openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
  -out cert.pem -days 2 -extfile ext 2>/dev/null
"#;
    let status = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl failed");
}

#[test]
fn a_tls_broker_with_a_password_is_reached_with_its_ca_and_the_password_stays_out_of_logs() {
    let dir = common::scratch_dir("nats-tls");
    broker_certificates(&dir);
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let port = free_port();
    let _broker = Broker::start_with(
        port,
        &[
            "--tls",
            "--tlscert",
            &file("cert.pem"),
            "--tlskey",
            &file("key.pem"),
            "--user",
            "alice",
            "--pass",
            "br0ker-secret",
        ],
    );
    let url = format!("tls://alice:br0ker-secret@127.0.0.1:{port}");
    let daemon = agent(
        &url,
        "secure",
        &["--insecure-no-auth", "--nats-ca", &file("ca.pem")],
    );
    assert!(
        daemon.log_text().contains("agent ready"),
        "{}",
        daemon.log_text()
    );
    let run = |ca: Option<&str>, url: &str| {
        let mut command = Command::new(REXEC);
        command.args(["--nats", url, "--connect-timeout", "5s"]);
        if let Some(ca) = ca {
            command.args(["--nats-ca", ca]);
        }
        command
            .args(["-w", "secure", "--", "echo over tls"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = run(Some(&file("ca.pem")), &url);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "secure | over tls\n");

    // Without the CA the broker's certificate is not trusted; with a wrong
    // password the broker refuses: both say so and exit 255.
    let untrusted = run(None, &url);
    assert_eq!(untrusted.status.code(), Some(255), "{untrusted:?}");
    let wrong = run(
        Some(&file("ca.pem")),
        &format!("tls://alice:wrong@127.0.0.1:{port}"),
    );
    assert_eq!(wrong.status.code(), Some(255), "{wrong:?}");
    for output in [&untrusted, &wrong] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
        assert!(
            !stderr.contains("wrong") && !stderr.contains("br0ker-secret"),
            "{stderr}"
        );
    }
    let missing = Command::new(REXEC)
        .args([
            "--nats",
            &url,
            "--nats-ca",
            "/nonexistent/ca.pem",
            "--discover",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--nats-ca /nonexistent/ca.pem"));
    assert!(
        !daemon.log_text().contains("br0ker-secret"),
        "{}",
        daemon.log_text()
    );
}
