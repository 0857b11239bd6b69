//! End-to-end behaviour of `rexec` against a real `rexecd`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Daemon, eventually, output_within, processes_matching, scratch_dir, sha256_file, unique_sleep,
};

/// Generous: only a hung client or server should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run rexec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let daemon = Daemon::start();
    let (code, out, err) = run(daemon
        .rexec()
        .args(["--", "echo out; echo err >&2; echo out2"]));
    assert_eq!(code, 0);
    assert_eq!(out, "out\nout2\n");
    assert_eq!(err, "err\n");
}

#[test]
fn exit_code_is_the_remote_code() {
    let daemon = Daemon::start();
    let (code, _, _) = run(daemon.rexec().args(["--", "exit 3"]));
    assert_eq!(code, 3);
    let (code, _, _) = run(daemon.rexec().args(["--", "no-such-command-here"]));
    assert_eq!(code, 127, "a shell command not found is a normal exit 127");
}

#[test]
fn death_by_signal_exits_128_plus_signal() {
    let daemon = Daemon::start();
    let (code, _, _) = run(daemon.rexec().args(["--", "kill -9 $$"]));
    assert_eq!(code, 137);
}

#[test]
fn words_are_joined_for_the_remote_shell() {
    let daemon = Daemon::start();
    let (code, out, _) = run(daemon.rexec().args(["--", "echo", "a", "&&", "echo", "b"]));
    assert_eq!((code, out.as_str()), (0, "a\nb\n"));
}

#[test]
fn argv_with_spaces_and_quotes_is_untouched() {
    let daemon = Daemon::start();
    let args = ["a b", "\"quoted\"", "it's", "$HOME", "*", ""];
    let (code, out, err) = run(daemon
        .rexec()
        .args(["--no-shell", "--", "printf", "[%s]\\n"])
        .args(args));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[a b]\n[\"quoted\"]\n[it's]\n[$HOME]\n[*]\n[]\n");
}

#[test]
fn env_and_cwd_reach_the_command() {
    let daemon = Daemon::start();
    let dir = scratch_dir("cwd");
    let (code, out, err) = run(daemon
        .rexec()
        .args(["-e", "GREETING=hello world", "--env", "EMPTY="])
        .args([
            "--cwd",
            dir.to_str().unwrap(),
            "--",
            "echo \"$GREETING\"; echo \"[${EMPTY-unset}]\"; pwd",
        ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("hello world\n[]\n{}\n", dir.display()));
}

#[test]
fn piped_stdin_reaches_the_command() {
    let daemon = Daemon::start();
    let out = output_within(
        daemon.rexec().args(["--", "tr a-z A-Z"]),
        b"hello\nworld\n",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"HELLO\nWORLD\n");
}

#[test]
fn without_stdin_cat_ends_at_once() {
    let daemon = Daemon::start();
    let started = Instant::now();
    // -n: no stdin even though ours is a pipe that never closes.
    let mut child = daemon
        .rexec()
        .args(["-n", "--", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.stdout, b"done\n");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn timeout_kills_the_command_and_says_so() {
    let daemon = Daemon::start();
    let started = Instant::now();
    let (code, _, err) = run(daemon.rexec().args(["--timeout", "1s", "--", "sleep 60"]));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 128 + 15, "killed by SIGTERM");
    assert!(err.contains("timed out"), "stderr: {err}");
    assert!(daemon.log_text().contains("\"timed_out\":true"));
}

#[test]
fn killed_client_leaves_no_process_running() {
    let daemon = Daemon::start();
    let (command, needle) = unique_sleep(300);
    let mut client = daemon
        .rexec()
        .args(["--", &command])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "sleep never started"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "sleep still running after the client died: {:?}",
        processes_matching(&needle)
    );
    assert!(eventually(Duration::from_secs(5), || daemon
        .log_text()
        .contains("\"client_gone\":true")));
}

#[test]
fn random_64_mib_arrive_intact() {
    let daemon = Daemon::start();
    let dir = scratch_dir("big");
    let source = common::random_file(&dir, "source.bin", 67108864);
    let copy = dir.join("copy.bin");
    let status = daemon
        .rexec()
        .args(["--", "cat", source.to_str().unwrap()])
        .stdout(std::fs::File::create(&copy).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 64 << 20);
    assert_eq!(sha256_file(&source), sha256_file(&copy));
    let _ = std::fs::remove_dir_all(dir);
}

/// More bulk streams at once than rexecd enlarges pipes for (16): the rest
/// keep default pipes and 64 KiB reads, and every stream arrives whole.
#[test]
fn twenty_bulk_streams_at_once_all_arrive_intact() {
    let daemon = Daemon::start();
    let dir = scratch_dir("bulk");
    let source = common::random_file(&dir, "source.bin", 16 << 20);
    let expected = sha256_file(&source);
    let children: Vec<_> = (0..20)
        .map(|i| {
            let copy = dir.join(format!("copy{i}.bin"));
            let child = daemon
                .rexec()
                .args(["--", "cat", source.to_str().unwrap()])
                .stdout(std::fs::File::create(&copy).unwrap())
                .spawn()
                .unwrap();
            (child, copy)
        })
        .collect();
    for (mut child, copy) in children {
        assert_eq!(child.wait().unwrap().code(), Some(0));
        assert_eq!(sha256_file(&copy), expected, "{}", copy.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn first_line_arrives_before_the_command_ends() {
    let daemon = Daemon::start();
    let started = Instant::now();
    let mut child = daemon
        .rexec()
        .args(["--", "echo a; sleep 3; echo b"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "a");
    let first = started.elapsed();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command ended before its first line was shown"
    );
    assert!(
        first < Duration::from_millis(2500),
        "first line took {first:?}"
    );
    assert_eq!(lines.next().unwrap().unwrap(), "b");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn encoding_transcodes_legacy_code_pages() {
    let daemon = Daemon::start();
    // "你好" in GBK.
    let (code, out, _) = run(daemon.rexec().args([
        "--encoding",
        "gbk",
        "--",
        "printf '\\304\\343\\272\\303\\n'",
    ]));
    assert_eq!(code, 0);
    assert_eq!(out, "你好\n");
    let (code, _, err) = run(daemon.rexec().args(["--encoding", "klingon", "--", "true"]));
    assert_eq!(code, 2);
    assert!(err.contains("unknown encoding"), "{err}");
}

#[test]
fn unreachable_server_exits_255_with_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = run(Command::new(common::REXEC)
        .args(["--addr", &addr, "--", "true"])
        .stdin(Stdio::null()));
    assert_eq!(code, 255);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!("rexec: cannot connect to {addr}: connection refused\n")
    );
}

#[test]
fn addr_comes_from_the_environment() {
    let daemon = Daemon::start();
    let out = Command::new(common::REXEC)
        .env("REXEC_ADDR", format!("http://{}", daemon.addr))
        .args(["--", "echo via-env"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"via-env\n");
}

#[test]
fn missing_program_and_cwd_are_rexec_failures() {
    let daemon = Daemon::start();
    let (code, _, err) = run(daemon
        .rexec()
        .args(["--no-shell", "--", "no-such-program-xyz"]));
    assert_eq!(code, 255);
    assert_eq!(
        err,
        "rexec: not found: program not found: no-such-program-xyz\n"
    );
    let (code, _, err) = run(daemon.rexec().args(["--cwd", "/no/such/dir", "--", "true"]));
    assert_eq!(code, 255);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn rexecd_refuses_non_loopback_without_auth() {
    let out = Command::new(common::REXECD)
        .args(["--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no readiness line");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));
}

#[test]
fn sigterm_stops_rexecd_and_kills_running_execs() {
    let mut daemon = Daemon::start_with(&["--shutdown-grace", "500ms", "--kill-grace", "500ms"]);
    let (command, needle) = unique_sleep(301);
    let client = daemon
        .rexec()
        .args(["--", &command])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || !processes_matching(
        &needle
    )
    .is_empty()));
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("rexecd exits after its grace");
    assert_eq!(status.code(), Some(0));
    assert!(processes_matching(&needle).is_empty(), "sleep left running");
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "the client gets the exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_flags_are_refused_before_anything_runs() {
    let daemon = Daemon::start();
    let marker = common::unique_marker("flag");
    for args in [
        vec!["--tiemout", "5s", "--", "echo", &marker],
        vec!["-z", "echo", &marker],
        vec!["--verbose", "echo", &marker],
    ] {
        let (code, out, err) = run(daemon.rexec().args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
    }
    let (_, _, err) = run(daemon.rexec().args(["--tiemout", "5s", "--", "true"]));
    assert!(err.contains("'--timeout'"), "clap's suggestion: {err}");
    // Words after `--` or after the first word are the remote side's.
    let (code, out, _) = run(daemon.rexec().args(["--", "echo", "-x", "--verbose"]));
    assert_eq!((code, out.as_str()), (0, "-x --verbose\n"));
    let (code, out, _) = run(daemon.rexec().args(["echo", "--tiemout", "-n"]));
    assert_eq!((code, out.as_str()), (0, "--tiemout -n\n"));
    assert!(
        !daemon.log_text().contains(&marker),
        "a refused flag ran nothing: {}",
        daemon.log_text()
    );
}

#[test]
fn a_host_without_a_port_means_port_50051() {
    // Nothing listens on 127.0.0.9:50051 in tests: the error names the port.
    let (code, _, err) = run(Command::new(common::REXEC)
        .args([
            "--addr",
            "127.0.0.9",
            "--connect-timeout",
            "2s",
            "--",
            "true",
        ])
        .stdin(Stdio::null()));
    assert_eq!(code, 255);
    assert!(err.contains("127.0.0.9:50051"), "{err}");
}

#[test]
fn encoding_accepts_code_page_aliases() {
    let daemon = Daemon::start();
    for label in ["cp936", "CP936", "gbk"] {
        let (code, out, err) = run(daemon.rexec().args([
            "--encoding",
            label,
            "--",
            "printf '\\304\\343\\272\\303\\n'",
        ]));
        assert_eq!((code, out.as_str()), (0, "你好\n"), "{label}: {err}");
    }
    let (code, out, _) =
        run(daemon
            .rexec()
            .args(["--encoding", "latin1", "--", "printf '\\351\\n'"]));
    assert_eq!((code, out.as_str()), (0, "é\n"));
    let (code, _, err) = run(daemon.rexec().args(["--encoding", "cp99999", "--", "true"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("cp936") && err.contains("shift_jis"),
        "names the labels: {err}"
    );
}

#[test]
fn help_is_short_and_shows_how_to_call() {
    let help = |flag: &str| {
        let out = Command::new(common::REXEC).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let (short, long) = (help("-h"), help("--help"));
    assert_eq!(
        short.lines().next(),
        long.lines().next(),
        "one summary line"
    );
    assert!(short.contains("rexec [OPTIONS] [--] WORDS..."), "{short}");
    assert!(
        long.contains("https://") && long.contains("Examples:"),
        "{long}"
    );
    assert!(
        short.lines().all(|line| line.len() < 260),
        "flag texts stay short: {short}"
    );
}
