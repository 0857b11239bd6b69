//! Nothing outlives its exec: processes that `setsid`, double-fork or ignore
//! SIGTERM are ended with it (a cgroup per exec); a rexecd that crashed leaves
//! nothing running once the next one starts; gRPC deadlines bound execs; the
//! exit carries the CPU time of every process; `--run-as` is done as the user.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXEC, eventually, output_within, processes_matching, scratch_dir};
use rexec::{ExecRequest, SessionRequest, exec_response, session_request};

const LIMIT: Duration = Duration::from_secs(60);

/// These tests need exec cgroups; the machines CI runs on have a cgroup2
/// mount, so a rexecd that cannot make them is a failure there.
fn cgroup_daemon(args: &[&str]) -> Daemon {
    let mut all = vec!["--containment", "cgroup"];
    all.extend_from_slice(args);
    Daemon::start_with(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `sleep` only the remote side names (see `common::unique_sleep`); the
/// tag only says what it is for.
fn sleeper(_what: &str) -> (String, String) {
    common::unique_sleep(900)
}

/// Every way out of a process group the issue names, each with its own needle.
fn escapes() -> Vec<(&'static str, String, String)> {
    let (a, na) = sleeper("setsid");
    let (b, nb) = sleeper("setsidf");
    let (c, nc) = sleeper("double");
    let (d, nd) = sleeper("noterm");
    vec![
        ("setsid &", format!("setsid {a} >/dev/null 2>&1 &"), na),
        ("setsid -f", format!("setsid -f {b} >/dev/null 2>&1"), nb),
        (
            "double fork",
            format!("(setsid sh -c '{c}' >/dev/null 2>&1 &)"),
            nc,
        ),
        (
            "SIGTERM ignored",
            format!("setsid sh -c 'trap \"\" TERM; exec {d}' >/dev/null 2>&1 &"),
            nd,
        ),
    ]
}

fn script(escapes: &[(&str, String, String)], tail: &str) -> String {
    let mut text: Vec<String> = escapes.iter().map(|(_, start, _)| start.clone()).collect();
    text.push(tail.to_string());
    text.join("\n")
}

fn assert_none_left(escapes: &[(&str, String, String)], when: &str) {
    for (name, _, needle) in escapes {
        let left = processes_matching(needle);
        assert!(
            left.is_empty(),
            "{name}: still running after {when}: {left:?}"
        );
    }
}

fn assert_all_running(escapes: &[(&str, String, String)]) {
    for (name, _, needle) in escapes {
        assert!(
            eventually(Duration::from_secs(10), || !processes_matching(needle)
                .is_empty()),
            "{name}: never started"
        );
    }
}

#[test]
fn escapees_end_with_a_normal_exit() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let escapes = escapes();
    // The escapees are running when the main process exits: it waits for them.
    let needles: Vec<String> = escapes.iter().map(|(_, _, n)| format!("'{n}'")).collect();
    let wait = format!(
        "for n in {}; do until pgrep -f \"$n\" >/dev/null; do sleep 0.05; done; done; exit 7",
        needles.join(" ")
    );
    let out = output_within(
        daemon.rexec().args(["--", &script(&escapes, &wait)]),
        b"",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // The exit event comes only once the exec's cgroup is empty.
    assert_none_left(&escapes, "the exit");
}

#[test]
fn escapees_end_with_a_timeout() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let escapes = escapes();
    let out = output_within(
        daemon
            .rexec()
            .args(["--timeout", "2s", "--", &script(&escapes, "sleep 60")]),
        b"",
        LIMIT,
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(daemon.log_text().contains("\"stopped_by\":\"timeout_ms\""));
    assert_none_left(&escapes, "the timeout");
}

#[test]
fn escapees_end_when_the_client_goes_away() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let escapes = escapes();
    let mut client = daemon
        .rexec()
        .args(["--", &script(&escapes, "sleep 60")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rexec");
    assert_all_running(&escapes);
    client.kill().expect("kill the client");
    client.wait().expect("reap the client");
    assert!(
        eventually(Duration::from_secs(20), || escapes
            .iter()
            .all(|(_, _, n)| processes_matching(n).is_empty())),
        "escapees outlived a cancelled exec"
    );
    assert!(eventually(Duration::from_secs(5), || daemon
        .log_text()
        .contains("\"stopped_by\":\"client_gone\"")));
}

#[test]
fn two_hundred_escapees_are_all_ended() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let (one, needle) = sleeper("many");
    let command = format!(
        "i=0; while [ $i -lt 200 ]; do setsid {one} >/dev/null 2>&1 & i=$((i+1)); done; \
         until [ \"$(pgrep -fc '{needle}')\" -ge 200 ]; do sleep 0.1; done; echo started"
    );
    let out = output_within(daemon.rexec().args(["--", &command]), b"", LIMIT);
    assert_eq!(text(&out.stdout).trim(), "started", "{}", text(&out.stderr));
    let left = processes_matching(&needle);
    assert!(left.is_empty(), "{} of 200 left", left.len());
}

#[test]
fn process_group_containment_is_said_at_start_and_still_runs_commands() {
    let daemon = Daemon::start_with(&["--containment", "process-group"]);
    let out = output_within(daemon.rexec().args(["--", "echo ok"]), b"", LIMIT);
    assert_eq!(text(&out.stdout), "ok\n");
    assert!(daemon.log_text().contains("containment=process-group"));
    let cgroup = cgroup_daemon(&[]);
    assert!(cgroup.log_text().contains("containment=cgroup"));
}

/// In cgroup mode a piped exec is cloned straight into its cgroup
/// (`runner/vfork.rs`), in process-group mode spawned by the standard
/// library: the command must not tell them apart (signals, descriptors,
/// environment, cwd, stdin), and a program that cannot run fails the same.
#[test]
fn a_cloned_child_starts_like_a_spawned_one() {
    // SigIgn is left out of the comparison: glibc's posix_spawn (the standard
    // library's path) hands its two internal signals (32, 33) over ignored.
    let probe = "cat /proc/self/status >status; grep -E '^(SigBlk|SigCgt)' status; \
                 grep -q '^SigIgn:.*[13579bdf]...$' status && echo SIGPIPE ignored; rm status; \
                 ls /proc/self/fd | tr '\\n' ' '; echo; readlink /proc/self/fd/0 | cut -d[ -f1; \
                 echo \"$REXEC_PROBE\"; pwd; [ -n \"$PATH\" ] && echo path; \
                 [ \"$(ps -o pgid= -p $$ | tr -d ' ')\" = $$ ] && echo leader";
    let dir = scratch_dir("clone-probe");
    let not_executable = dir.join("data");
    std::fs::write(&not_executable, "#!/bin/sh\necho ran\n").unwrap();
    let run = |daemon: &Daemon| {
        let out = output_within(
            daemon.rexec().args([
                "--cwd",
                dir.to_str().unwrap(),
                "-e",
                "REXEC_PROBE=a b",
                "--",
                probe,
            ]),
            b"",
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let refused = output_within(
            daemon
                .rexec()
                .args(["--no-shell", "--", not_executable.to_str().unwrap()]),
            b"",
            LIMIT,
        );
        (
            text(&out.stdout),
            refused.status.code(),
            text(&refused.stderr),
        )
    };
    let cloned = run(&cgroup_daemon(&[]));
    let spawned = run(&Daemon::start_with(&["--containment", "process-group"]));
    assert_eq!(cloned, spawned);
    let (stdout, code, stderr) = cloned;
    let expected = format!(
        "SigBlk:\t0000000000000000\nSigCgt:\t0000000000000000\n0 1 2 3 \npipe:\na b\n{}\npath\nleader\n",
        dir.display()
    );
    assert_eq!(
        stdout, expected,
        "only stdio (and ls's own) open, nothing blocked or caught"
    );
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_crashed_rexecds_leftovers_are_killed_by_the_next_and_a_live_neighbour_is_untouched() {
    let mut crashed = cgroup_daemon(&[]);
    let neighbour = cgroup_daemon(&[]);
    let (left_bg, left_bg_needle) = sleeper("crashbg");
    let (left_fg, left_fg_needle) = sleeper("crashfg");
    let (kept, kept_needle) = sleeper("neighbour");
    let spawn = |daemon: &Daemon, command: String| {
        daemon
            .rexec()
            .args(["--", &command])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rexec")
    };
    let mut clients = vec![
        spawn(
            &crashed,
            format!("setsid {left_bg} >/dev/null 2>&1 & {left_fg}"),
        ),
        spawn(&neighbour, kept.clone()),
    ];
    for needle in [&left_bg_needle, &left_fg_needle, &kept_needle] {
        assert!(eventually(Duration::from_secs(10), || !processes_matching(
            needle
        )
        .is_empty()));
    }
    crashed.signal(libc::SIGKILL);
    assert!(crashed.wait_exit(Duration::from_secs(5)).is_some());
    // Nothing else would ever end these.
    assert!(!processes_matching(&left_bg_needle).is_empty());
    assert!(!processes_matching(&left_fg_needle).is_empty());

    let next = cgroup_daemon(&[]);
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(
            &left_bg_needle
        )
        .is_empty()
            && processes_matching(&left_fg_needle).is_empty()),
        "the crashed rexecd's execs are still running"
    );
    assert!(
        next.log_text().contains("no longer running"),
        "{}",
        next.log_text()
    );
    assert!(
        !processes_matching(&kept_needle).is_empty(),
        "the live neighbour's exec was killed"
    );
    for client in &mut clients {
        let _ = client.kill();
        let _ = client.wait();
    }
    drop(neighbour);
    assert!(eventually(Duration::from_secs(10), || processes_matching(
        &kept_needle
    )
    .is_empty()));
}

async fn client(daemon: &Daemon) -> common::RawClient {
    common::raw_client(&daemon.addr).await
}

/// A request carrying `grpc-timeout` the way a proxy or a plain HTTP/2 client
/// sends it, with no timer of the client's own.
fn with_deadline<T>(message: T, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("grpc-timeout", value.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_deadline_ends_an_exec_with_deadline_exceeded() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let mut client = client(&daemon).await;
    let (sleep, needle) = sleeper("deadline");
    let request = ExecRequest {
        command: format!("setsid {sleep} >/dev/null 2>&1 & {sleep}"),
        ..Default::default()
    };
    let call = async {
        let mut stream = client
            .exec(with_deadline(request, "1S"))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    };
    let ended = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the server did not end the call at its deadline");
    let status = ended.expect_err("the call should fail");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(processes_matching(&needle).is_empty());
    assert!(eventually(Duration::from_secs(5), || daemon
        .log_text()
        .contains("\"stopped_by\":\"deadline\"")));

    // A timeout_ms shorter than the deadline wins, and is named.
    let request = ExecRequest {
        command: "sleep 30".into(),
        timeout_ms: 500,
        ..Default::default()
    };
    let mut stream = client
        .exec(with_deadline(request, "20S"))
        .await
        .unwrap()
        .into_inner();
    let mut timed_out = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(exec_response::Event::Exit(exit)) = event.event {
            timed_out = Some(exit.timed_out);
        }
    }
    assert_eq!(timed_out, Some(true));
    assert!(daemon.log_text().contains("\"stopped_by\":\"timeout_ms\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_deadline_ends_a_session() {
    let daemon = cgroup_daemon(&["--kill-grace", "500ms"]);
    let mut client = client(&daemon).await;
    let (sleep, needle) = sleeper("sessiondeadline");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(SessionRequest {
        event: Some(session_request::Event::Start(ExecRequest {
            command: sleep,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let inbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let call = async {
        let mut stream = client
            .session(with_deadline(inbound, "1S"))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    };
    let ended = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the server did not end the session at its deadline");
    assert_eq!(
        ended.expect_err("the call should fail").code(),
        tonic::Code::DeadlineExceeded
    );
    drop(tx);
    assert!(processes_matching(&needle).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_carries_the_cpu_time_of_every_process() {
    let daemon = cgroup_daemon(&[]);
    let mut client = client(&daemon).await;
    // The work is done by a process that left the main one's group; the main
    // process only waits for its result.
    let dir = scratch_dir("cpu");
    let done = dir.join("done");
    let command = format!(
        "setsid -f sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; touch {0}' \
         >/dev/null 2>&1; until [ -e {0} ]; do sleep 0.05; done",
        done.display()
    );
    let mut stream = client
        .exec(ExecRequest {
            command,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut cpu = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(exec_response::Event::Exit(exit)) = event.event {
            cpu = Some((exit.cpu_user_us, exit.cpu_system_us));
        }
    }
    let (user, system) = cpu.expect("an exit event");
    // 300,000 shell loop turns take well over 50 ms of CPU on any machine.
    assert!(
        user + system > 50_000,
        "cpu user {user} us, system {system} us"
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("\"audit\":\"exec\""))
        .expect("audit line");
    let audit: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(audit["cpu_user_us"].as_u64(), Some(user));
    assert_eq!(audit["cpu_system_us"].as_u64(), Some(system));

    // Fan-out records carry it too.
    let out = output_within(
        Command::new(REXEC).args([
            "-H",
            &daemon.addr,
            "--json",
            "--",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        ]),
        b"",
        LIMIT,
    );
    let record: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().expect("a record")).unwrap();
    let total = record["cpu_user_us"].as_u64().unwrap() + record["cpu_system_us"].as_u64().unwrap();
    assert!(total > 0, "{record}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn run_as_enters_the_cwd_as_the_user_and_owns_its_tty() {
    assert!(is_root(), "these tests run as root (CI does)");
    let dir = scratch_dir("private");
    let secret = dir.join("root-only");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("file"), "secret").unwrap();
    let daemon = cgroup_daemon(&["--run-as", "nobody"]);
    let out = output_within(
        daemon
            .rexec()
            .args(["--cwd", secret.to_str().unwrap(), "--", "cat file"]),
        b"",
        LIMIT,
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("secret"));
    assert!(
        text(&out.stderr).contains("permission denied")
            || text(&out.stderr).contains("not accessible"),
        "{}",
        text(&out.stderr)
    );
    // The tty is the user's, as after a login.
    let out = output_within(
        daemon.rexec().args(["-t", "--", "stat -c %U $(tty)"]),
        b"",
        LIMIT,
    );
    assert_eq!(text(&out.stdout).trim(), "nobody", "{}", text(&out.stderr));
}

#[test]
fn descriptors_rexecd_inherited_are_not_passed_to_commands() {
    let dir = scratch_dir("fd");
    let log = dir.join("rexecd.log");
    let mut daemon = Command::new("sh")
        .args([
            "-c",
            &format!(
                "exec 9</etc/passwd; exec {} --listen 127.0.0.1:0 2>{}",
                common::REXECD,
                log.display()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening grpc=")
        .unwrap()
        .to_string();
    let check = "if [ -e /proc/$$/fd/9 ]; then echo leaked; else echo closed; fi";
    let piped = output_within(
        Command::new(REXEC).args(["--addr", &addr, "--", check]),
        b"",
        LIMIT,
    );
    let tty = output_within(
        Command::new(REXEC).args(["--addr", &addr, "-t", "--", check]),
        b"",
        LIMIT,
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    assert_eq!(text(&piped.stdout).trim(), "closed");
    assert_eq!(text(&tty.stdout).trim(), "closed");
}
