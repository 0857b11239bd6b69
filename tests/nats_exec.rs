//! Exec over NATS, against a real nats-server on loopback: commands run on
//! agents by name through the fan-out's output modes, big output and stdin
//! intact, a missing agent named, Ctrl-C and a silent caller killing the
//! command, tokens enforced, a slow caller holding the agent's memory down,
//! a lost event asked for again, and bad messages answered with an error
//! while nothing runs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{Broker, agent, runtime};
use common::{
    Daemon, REXEC, eventually, output_within, processes_matching, random_file, rss_kib,
    scratch_dir, sha256_file, unique_marker, unique_sleep,
};
use prost::Message;
use rexec::proto::{
    Ack, ExecRequest, NatsError, NatsExecEvent, NatsExecInput, NatsExecRequest, NatsStarted,
    nats_exec_event, nats_exec_input,
};
use tokio_stream::StreamExt;

const OPEN: &[&str] = &["--insecure-no-auth"];

fn rexec_nats(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(REXEC);
    command
        .args(["--nats", url, "--connect-timeout", "5s"])
        .args(args)
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails the test unless no process matching `needle` is left within `limit`.
fn assert_gone(needle: &str, limit: Duration, why: &str) {
    assert!(
        eventually(limit, || processes_matching(needle).is_empty()),
        "{why}"
    );
}

#[test]
fn twenty_agents_run_a_command_by_name_in_every_output_mode() {
    let broker = Broker::start();
    let _agents: Vec<Daemon> = (1..=20)
        .map(|n| agent(&broker.url(), &format!("n{n:02}"), OPEN))
        .collect();
    let command = r#"echo "on $(cat /proc/sys/kernel/hostname)"; echo warn >&2"#;

    let lines = rexec_nats(&broker.url(), &["-w", "n[01-20]", "--", command])
        .output()
        .unwrap();
    assert_eq!(lines.status.code(), Some(0), "{lines:?}");
    let stdout = text(&lines.stdout);
    for n in 1..=20 {
        assert!(stdout.contains(&format!("n{n:02} | on ")), "{stdout}");
    }
    assert_eq!(stdout.lines().count(), 20, "{stdout}");
    assert_eq!(text(&lines.stderr).matches("| warn").count(), 20);

    let gathered = rexec_nats(&broker.url(), &["-w", "n[01-20]", "-b", "--", "echo same"])
        .output()
        .unwrap();
    assert_eq!(gathered.status.code(), Some(0), "{gathered:?}");
    let stdout = text(&gathered.stdout);
    assert!(stdout.contains("n[01-20] (20)"), "{stdout}");
    assert_eq!(stdout.matches("same").count(), 1, "{stdout}");

    let json = rexec_nats(&broker.url(), &["-w", "n[01-03]", "--json", "--", "exit 4"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(4), "{json:?}");
    let records: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["exit"] == 4), "{records:?}");

    let dir = scratch_dir("nats-outdir").join("out");
    let output = rexec_nats(
        &broker.url(),
        &[
            "-w",
            "n[01-02]",
            "--output-dir",
            dir.to_str().unwrap(),
            "--",
            "echo to-file",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("n01.out")).unwrap(),
        "to-file\n"
    );
    assert!(dir.join("summary.json").is_file());
}

#[test]
fn an_agent_that_is_not_there_is_named_and_the_run_exits_255() {
    let broker = Broker::start();
    let _agents = [
        agent(&broker.url(), "a1", OPEN),
        agent(&broker.url(), "a2", OPEN),
    ];
    let output = rexec_nats(&broker.url(), &["-w", "a[1-3]", "--", "echo up"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("a1 | up") && stdout.contains("a2 | up"),
        "{stdout}"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("a3") && stderr.contains("not responding"),
        "{stderr}"
    );
}

#[test]
fn fifty_mib_of_random_output_and_five_of_stdin_arrive_intact() {
    let broker = Broker::start();
    let _agents = [
        agent(&broker.url(), "big1", OPEN),
        agent(&broker.url(), "big2", OPEN),
    ];
    let dir = scratch_dir("nats-big");
    let source = random_file(&dir, "random", 50 * 1024 * 1024);
    let out = dir.join("out");
    let command = format!("cat {}", source.display());
    let output = rexec_nats(
        &broker.url(),
        &[
            "-w",
            "big[1-2]",
            "--output-dir",
            out.to_str().unwrap(),
            "--",
            &command,
        ],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let expected = sha256_file(&source);
    assert_eq!(sha256_file(&out.join("big1.out")), expected);
    assert_eq!(sha256_file(&out.join("big2.out")), expected);

    let stdin: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let local = dir.join("stdin");
    std::fs::write(&local, &stdin).unwrap();
    let mut command = rexec_nats(&broker.url(), &["-w", "big[1-2]", "--", "sha256sum"]);
    let output = output_within(&mut command, &stdin, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    let sum = sha256_file(&local);
    assert_eq!(stdout.matches(&sum).count(), 2, "{stdout}");
}

#[test]
fn ctrl_c_cancels_the_command_on_every_agent() {
    let broker = Broker::start();
    let agents = [
        agent(&broker.url(), "c1", OPEN),
        agent(&broker.url(), "c2", OPEN),
        agent(&broker.url(), "c3", OPEN),
    ];
    let (sleep, needle) = unique_sleep(60);
    let mut child = rexec_nats(&broker.url(), &["-w", "c[1-3]", "--", &sleep])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .len()
            == 3),
        "the sleeps did not start"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = output_of(&mut child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    assert_gone(
        &needle,
        Duration::from_secs(5),
        "remote commands still run after Ctrl-C",
    );
    assert!(text(&output.stderr).contains("interrupted"), "{output:?}");
    for agent in &agents {
        assert!(
            eventually(Duration::from_secs(5), || agent.log_text().lines().any(
                |l| {
                    l.contains(r#""audit":"exec""#)
                        && l.contains(r#""listener":"nats""#)
                        && l.contains("client_gone")
                }
            )),
            "{}",
            agent.log_text()
        );
    }
}

fn output_of(child: &mut std::process::Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("rexec did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

#[test]
fn tokens_are_checked_over_nats_as_over_grpc() {
    let broker = Broker::start();
    let dir = scratch_dir("nats-tokens");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "alice s3cret-nats-token\n").unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let daemon = agent(
        &broker.url(),
        "t1",
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let marker = unique_marker("nats-token");
    let flag = dir.join(&marker);
    let touch = format!("touch {}", flag.display());

    let missing = rexec_nats(&broker.url(), &["-w", "t1", "--", &touch])
        .env_remove("REXEC_TOKEN")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(255), "{missing:?}");
    assert!(
        text(&missing.stderr).contains("missing credentials"),
        "{missing:?}"
    );
    let wrong = rexec_nats(&broker.url(), &["-w", "t1", "--", &touch])
        .env("REXEC_TOKEN", "not-it")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(255), "{wrong:?}");
    assert!(text(&wrong.stderr).contains("invalid token"), "{wrong:?}");
    assert!(!flag.exists(), "a refused request ran");

    let right = rexec_nats(&broker.url(), &["-w", "t1", "--", &touch])
        .env("REXEC_TOKEN", "s3cret-nats-token")
        .output()
        .unwrap();
    assert_eq!(right.status.code(), Some(0), "{right:?}");
    assert!(flag.exists());
    let log = daemon.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(r#""audit":"refused""#) && l.contains(r#""listener":"nats""#))
            .count(),
        2,
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains(r#""audit":"exec""#)
        && l.contains(r#""listener":"nats""#)
        && l.contains(r#""principal":"alice""#)));
    assert!(
        !log.contains("s3cret-nats-token"),
        "the token is in the log"
    );
}

/// A raw NATS caller: sends one request and returns the reply subscription.
async fn request(
    client: &async_nats::Client,
    agent: &str,
    request: NatsExecRequest,
) -> async_nats::Subscriber {
    let inbox = client.new_inbox();
    let replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(
            format!("rexec.v1.{agent}.exec"),
            inbox,
            request.encode_to_vec().into(),
        )
        .await
        .unwrap();
    replies
}

async fn next_event(replies: &mut async_nats::Subscriber) -> NatsExecEvent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("an event within 10 s")
            .expect("subscription open");
        let event = NatsExecEvent::decode(message.payload).expect("a NatsExecEvent");
        if event.seq != 0 {
            return event;
        }
    }
}

fn shell(command: &str) -> NatsExecRequest {
    NatsExecRequest {
        request: Some(ExecRequest {
            command: command.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_caller_that_stops_reading_holds_the_command_and_memory_then_it_is_killed() {
    let broker = Broker::start();
    let daemon = agent(&broker.url(), "slow", OPEN);
    let marker = unique_marker("nats-slow");
    let idle_rss = rss_kib(daemon.pid());
    let command = format!("exec yes {marker}");
    runtime().block_on(async {
        let client = async_nats::connect(broker.url()).await.unwrap();
        let mut replies = request(
            &client,
            "slow",
            NatsExecRequest {
                window_bytes: 1024 * 1024,
                ..shell(&command)
            },
        )
        .await;
        let started = next_event(&mut replies).await;
        assert!(matches!(
            started.event,
            Some(nats_exec_event::Event::Started(_))
        ));
        // Never acknowledge: the agent stops after its window.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut received = 0usize;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), replies.next()).await
        {
            received += message.payload.len();
        }
        assert!(
            received < 2 * 1024 * 1024,
            "{received} bytes past a 1 MiB window"
        );
        let rss = rss_kib(daemon.pid());
        assert!(
            rss < idle_rss + 40 * 1024,
            "rexecd grew from {idle_rss} KiB to {rss} KiB behind a slow caller"
        );
        assert_eq!(
            processes_matching(&marker).len(),
            1,
            "yes is still held, not killed"
        );
        // Silent for 10 s (no ack, no keepalive): the agent kills it.
        assert_gone(
            &marker,
            Duration::from_secs(20),
            "the command outlived a silent caller",
        );
    });
    assert!(
        daemon.log_text().contains("caller silent"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn bad_messages_are_answered_with_an_error_and_run_nothing() {
    let broker = Broker::start();
    let mut daemon = agent(&broker.url(), "strict", OPEN);
    let dir = scratch_dir("nats-bad");
    let flag = dir.join("ran");
    let touch = format!("touch {}", flag.display());
    runtime().block_on(async {
        let client = async_nats::connect(broker.url()).await.unwrap();
        let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 13) as u8).collect();
        let agent_info = rexec::AgentInfo {
            name: touch.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let tty = NatsExecRequest {
            request: Some(ExecRequest {
                command: touch.clone(),
                tty: true,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let both = NatsExecRequest {
            request: Some(ExecRequest {
                command: touch.clone(),
                argv: vec!["touch".into(), flag.display().to_string()],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let big = vec![0xffu8; 1000 * 1024];
        for payload in [garbage, agent_info, tty, both, Vec::new(), big] {
            let inbox = client.new_inbox();
            let mut replies = client.subscribe(inbox.clone()).await.unwrap();
            client
                .publish_with_reply("rexec.v1.strict.exec", inbox, payload.into())
                .await
                .unwrap();
            let event = next_event(&mut replies).await;
            let Some(nats_exec_event::Event::Error(NatsError { code, message })) = event.event
            else {
                panic!("expected an error, got {event:?}");
            };
            assert_eq!(code, tonic::Code::InvalidArgument as i32, "{message}");
        }
        // No reply subject: nobody to answer, nothing runs.
        client
            .publish("rexec.v1.strict.exec", shell(&touch).encode_to_vec().into())
            .await
            .unwrap();
        // Garbage on a running exec's control subject ends it with an error.
        let (sleep, needle) = unique_sleep(60);
        let mut replies = request(&client, "strict", shell(&sleep)).await;
        let Some(nats_exec_event::Event::Started(NatsStarted { control, .. })) =
            next_event(&mut replies).await.event
        else {
            panic!("not started");
        };
        client.publish(control, vec![0xff; 32].into()).await.unwrap();
        let event = next_event(&mut replies).await;
        assert!(
            matches!(&event.event, Some(nats_exec_event::Event::Error(e)) if e.code == tonic::Code::InvalidArgument as i32),
            "{event:?}"
        );
        assert_gone(&needle, Duration::from_secs(5), "the sleep outlived its bad control message");
        client.flush().await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!flag.exists(), "a bad request ran its command");
    assert!(
        daemon.wait_exit(Duration::from_millis(100)).is_none(),
        "agent died"
    );
    let output = rexec_nats(&broker.url(), &["-w", "strict", "--", "echo fine"])
        .output()
        .unwrap();
    assert_eq!(text(&output.stdout), "strict | fine\n", "{output:?}");
}

/// A stand-in agent that loses one event: rexec asks for it again and prints
/// the output whole and in order.
#[test]
fn a_lost_event_is_asked_for_again_and_output_stays_in_order() {
    let broker = Broker::start();
    let url = broker.url();
    let (mut child, resends) = runtime().block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let mut requests = client.subscribe("rexec.v1.fake.exec").await.unwrap();
        client.flush().await.unwrap();
        let child = rexec_nats(&url, &["-w", "fake", "--", "anything"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let request = tokio::time::timeout(Duration::from_secs(10), requests.next())
            .await
            .unwrap()
            .unwrap();
        let reply = request.reply.unwrap();
        let mut control = client.subscribe("rexec.v1.fake.ctl.x").await.unwrap();
        let send = |seq, event| {
            let message = NatsExecEvent {
                seq,
                event: Some(event),
                sent: 0,
            };
            client.publish(reply.clone(), message.encode_to_vec().into())
        };
        let started = nats_exec_event::Event::Started(NatsStarted {
            pid: 1,
            exec_id: "x".into(),
            control: "rexec.v1.fake.ctl.x".into(),
        });
        send(1, started).await.unwrap();
        // seq 2 is "lost"; 3 arrives first.
        send(3, nats_exec_event::Event::Stdout("second\n".into()))
            .await
            .unwrap();
        let mut resends = 0;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), control.next())
                .await
                .unwrap()
                .unwrap();
            let input = NatsExecInput::decode(message.payload).unwrap();
            if let Some(nats_exec_input::Event::Ack(Ack { seq, resend: true })) = input.event {
                assert_eq!(seq, 0, "nothing was consumed before the gap");
                resends += 1;
                break;
            }
        }
        send(2, nats_exec_event::Event::Stdout("first\n".into()))
            .await
            .unwrap();
        send(3, nats_exec_event::Event::Stdout("second\n".into()))
            .await
            .unwrap();
        send(3, nats_exec_event::Event::Stdout("repeat\n".into()))
            .await
            .unwrap();
        let exit = rexec::Exit {
            status: Some(rexec::exit::Status::Code(0)),
            ..Default::default()
        };
        send(4, nats_exec_event::Event::Exit(exit)).await.unwrap();
        client.flush().await.unwrap();
        (child, resends)
    });
    let output = output_of(&mut child, Duration::from_secs(10));
    assert_eq!(resends, 1);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout), "fake | first\nfake | second\n");
}

#[test]
fn an_agent_that_loses_the_broker_mid_exec_kills_the_command() {
    let broker = Broker::start();
    let daemon = agent(&broker.url(), "cut", OPEN);
    let (sleep, needle) = unique_sleep(60);
    let mut child = rexec_nats(&broker.url(), &["-w", "cut", "--", &sleep])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .len()
            == 1),
        "the sleep did not start"
    );
    drop(broker);
    // Neither side hears the other: rexec gives up, the agent kills the command.
    let output = output_of(&mut child, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    assert_gone(
        &needle,
        Duration::from_secs(20),
        "the command outlived the broker",
    );
    assert!(
        daemon.log_text().contains("caller silent"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn another_local_user_on_the_broker_cannot_run_as_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root (su nobody)"
        );
        eprintln!("skipped: needs root");
        return;
    }
    let broker = Broker::start();
    // Default security: the local token of the user who started rexecd, which
    // rexec never puts on the bus by itself and nobody cannot read.
    let daemon = agent(&broker.url(), "mine", &[]);
    let dir = scratch_dir("nats-nobody");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let flag = dir.join("ran");
    let script = format!(
        "{REXEC} --nats {} -w mine -- touch {} ; echo rc=$?",
        broker.url(),
        flag.display()
    );
    let mut su = Command::new("su");
    su.args(["nobody", "-s", "/bin/sh", "-c", &script]);
    let output = output_within(&mut su, b"", Duration::from_secs(30));
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        all.contains("rc=255") && all.contains("missing credentials"),
        "{all}"
    );
    assert!(!flag.exists(), "nobody ran a command through the agent");
    assert!(
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains(r#""audit":"refused""#) && l.contains(r#""listener":"nats""#)),
        "{}",
        daemon.log_text()
    );
}
