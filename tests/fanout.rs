//! Fleet fan-out end to end: `rexec -H ... -- WORDS` against three real
//! rexecd on loopback plus one dead port.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, REXEC, output_within, scratch_dir};

const LIMIT: Duration = Duration::from_secs(30);

/// Three daemons; a command tells them apart by `$PPID` (rexecd's pid).
fn three() -> Vec<Daemon> {
    (0..3).map(|_| Daemon::start()).collect()
}

/// A loopback port nothing listens on.
fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    addr
}

/// `rexec -H A -H B ...` with stdin closed unless the test sets it.
fn fleet<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Command {
    let mut command = Command::new(REXEC);
    for host in hosts {
        command.args(["-H", host]);
    }
    command.env_remove("NO_COLOR").stdin(Stdio::null());
    command
}

fn addrs(daemons: &[Daemon]) -> Vec<&str> {
    daemons.iter().map(|d| d.addr.as_str()).collect()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(command: &mut Command, stdin: &[u8]) -> Run {
    let out = output_within(command, stdin, LIMIT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines
}

#[test]
fn every_line_is_prefixed_with_its_host_and_stderr_stays_apart() {
    let daemons = three();
    let hosts = addrs(&daemons);
    let out = run(
        fleet(hosts.clone()).args(["--", "echo out; echo err >&2; printf partial"]),
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut expected_out = Vec::new();
    let mut expected_err = Vec::new();
    for host in &hosts {
        expected_out.push(format!("{host} | out"));
        expected_out.push(format!("{host} | partial"));
        expected_err.push(format!("{host} | err"));
    }
    expected_out.sort();
    expected_err.sort();
    assert_eq!(sorted_lines(&out.stdout), expected_out);
    assert_eq!(sorted_lines(&out.stderr), expected_err);
    assert!(
        out.stdout.ends_with('\n'),
        "a partial line is flushed with a newline"
    );
}

#[test]
fn lines_of_different_hosts_never_mix_within_a_line() {
    let daemons = three();
    let hosts = addrs(&daemons);
    // 5000 lines of 300+ bytes from each host at once: the server's chunks
    // end mid-line, so only holding partial lines keeps them whole.
    let long = "x".repeat(300);
    let script = format!("yes \"$PPID:{long}\" | head -n 5000");
    let out = run(fleet(hosts.clone()).args(["--", &script]), b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pid_of: HashMap<&str, String> = daemons
        .iter()
        .map(|d| (d.addr.as_str(), d.pid().to_string()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in out.stdout.lines() {
        let (host, text) = line.split_once(" | ").expect("prefixed line");
        let pid = pid_of
            .get(host)
            .unwrap_or_else(|| panic!("bad prefix in {line:?}"));
        assert_eq!(text, format!("{pid}:{long}"), "a mixed or cut line");
        *counts.entry(host).or_default() += 1;
    }
    for host in &hosts {
        assert_eq!(counts.get(host), Some(&5000), "lines from {host}");
    }
}

#[test]
fn group_prints_each_hosts_output_together() {
    let daemons = three();
    let hosts = addrs(&daemons);
    let out = run(
        fleet(hosts.clone()).args([
            "--group",
            "--",
            "echo one; sleep 0.3; echo two; sleep 0.3; echo three",
        ]),
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 9, "{}", out.stdout);
    for block in lines.chunks(3) {
        let (host, _) = block[0].split_once(" | ").expect("prefixed");
        let expected: Vec<String> = ["one", "two", "three"]
            .iter()
            .map(|word| format!("{host} | {word}"))
            .collect();
        assert_eq!(block, expected, "one host's lines, together and in order");
    }
}

#[test]
fn json_prints_one_object_per_host_with_base64_for_bytes_that_are_not_utf8() {
    let daemons = three();
    let dead = dead_port();
    let mut hosts = addrs(&daemons);
    hosts.push(&dead);
    let odd = daemons[0].pid();
    let script =
        format!("echo out; echo err >&2; if [ $PPID = {odd} ]; then printf '\\377\\n'; exit 4; fi");
    let out = run(
        fleet(hosts.clone()).args(["--json", "--json-base64", "--", &script]),
        b"",
    );
    assert_eq!(out.code, 255, "a dead host makes it 255: {}", out.stderr);
    let mut seen = HashMap::new();
    for line in out.stdout.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
        let host = record["host"].as_str().expect("host").to_string();
        assert!(record["duration_ms"].is_u64(), "{record}");
        seen.insert(host, record);
    }
    assert_eq!(seen.len(), 4, "{}", out.stdout);
    let failed = &seen[&dead];
    assert_eq!(failed["exit"], serde_json::Value::Null);
    let error = failed["error"].as_str().expect("error text");
    assert!(error.contains("cannot connect"), "{error}");
    let odd_record = &seen[&daemons[0].addr];
    assert_eq!(odd_record["exit"], 4);
    assert_eq!(odd_record["stdout"], "b3V0Cv8K", "base64 of out\\n\\xff\\n");
    assert_eq!(odd_record["stdout_base64"], true);
    assert_eq!(odd_record["stderr"], "err\n");
    for daemon in &daemons[1..] {
        let record = &seen[&daemon.addr];
        assert_eq!(record["exit"], 0);
        assert_eq!(record["signal"], serde_json::Value::Null);
        assert_eq!(record["stdout"], "out\n");
        assert_eq!(record["stderr"], "err\n");
        assert_eq!(record["error"], serde_json::Value::Null);
        assert!(record.get("stdout_base64").is_none(), "{record}");
    }
}

#[test]
fn json_without_the_base64_flag_keeps_text() {
    let daemon = Daemon::start();
    let out = run(
        fleet([daemon.addr.as_str()]).args(["--json", "--", "printf 'a\\377\\n'; kill -9 $$"]),
        b"",
    );
    assert_eq!(out.code, 137, "{}", out.stderr);
    let record: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(record["stdout"], "a\u{fffd}\n");
    assert_eq!(record["signal"], "KILL");
    assert_eq!(record["exit"], serde_json::Value::Null);
}

#[test]
fn exit_code_is_zero_when_all_succeed_else_the_largest() {
    let daemons = three();
    let hosts = addrs(&daemons);
    let out = run(fleet(hosts.clone()).args(["--", "true"]), b"");
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));

    let three_pid = daemons[1].pid();
    let one_pid = daemons[2].pid();
    let script = format!(
        "echo ran; [ $PPID = {three_pid} ] && exit 3; [ $PPID = {one_pid} ] && exit 1; exit 0"
    );
    let out = run(fleet(hosts.clone()).args(["--", &script]), b"");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3);
    assert!(
        out.stderr.contains("rexec: 2 of 3 hosts failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("  {}: exit 3", hosts[1])),
        "{}",
        out.stderr
    );
}

#[test]
fn an_unreachable_host_exits_255_and_the_others_still_run() {
    let daemons = three();
    let dead = dead_port();
    let mut hosts = addrs(&daemons);
    hosts.insert(1, &dead);
    let out = run(fleet(hosts.clone()).args(["--", "echo alive"]), b"");
    assert_eq!(out.code, 255, "{}", out.stderr);
    for daemon in &daemons {
        assert!(
            out.stdout.contains(&format!("{} | alive\n", daemon.addr)),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stderr
            .contains(&format!("{dead} | rexec: cannot connect to {dead}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("1 of 4 hosts failed"), "{}", out.stderr);
}

#[test]
fn a_sleeping_host_does_not_delay_another_hosts_lines() {
    let daemons = three();
    let slow = daemons[0].pid();
    let script = format!("[ $PPID = {slow} ] && sleep 4; echo done");
    let start = Instant::now();
    let mut child = fleet(addrs(&daemons))
        .args(["--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rexec");
    let stdout = child.stdout.take().expect("stdout");
    let mut arrivals = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read line");
        arrivals.push((line, start.elapsed()));
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    let slow_line = format!("{} | done", daemons[0].addr);
    for (line, at) in &arrivals {
        if *line == slow_line {
            assert!(*at >= Duration::from_secs(3), "{arrivals:?}");
        } else {
            assert!(
                *at < Duration::from_secs(2),
                "a fast host waited for the slow one: {arrivals:?}"
            );
        }
    }
    assert_eq!(arrivals.last().map(|(l, _)| l), Some(&slow_line));
}

#[test]
fn piped_stdin_is_sent_to_every_host() {
    let daemons = three();
    let hosts = addrs(&daemons);
    let out = run(
        fleet(hosts.clone()).args(["--", "tr a-z A-Z"]),
        b"hello fleet\nsecond line\n",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for host in &hosts {
        let expected = format!("{host} | HELLO FLEET\n{host} | SECOND LINE\n");
        assert!(out.stdout.contains(&expected), "{}", out.stdout);
    }
    let out = run(
        fleet(hosts.clone()).args(["-n", "--", "wc -c"]),
        b"ignored\n",
    );
    assert_eq!(out.stdout.matches(" | 0\n").count(), 3, "{}", out.stdout);
}

#[test]
fn hosts_file_skips_comments_and_blank_lines() {
    let daemons = three();
    let dir = scratch_dir("hosts");
    let file = dir.join("hosts");
    let text = format!(
        "# the fleet\n\n{}\n   {}   # trailing comment\n\t\nhttp://{}\n",
        daemons[0].addr, daemons[1].addr, daemons[2].addr
    );
    std::fs::write(&file, text).expect("write hosts file");
    let file = file.to_str().expect("utf-8 path");
    let out = run(
        Command::new(REXEC)
            .args(["--hosts-file", file, "--", "echo hi"])
            .stdin(Stdio::null()),
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut expected = vec![
        format!("{} | hi", daemons[0].addr),
        format!("{} | hi", daemons[1].addr),
        format!("http://{} | hi", daemons[2].addr),
    ];
    expected.sort();
    assert_eq!(sorted_lines(&out.stdout), expected, "names as written");

    // -H adds to the file; a host listed twice runs once.
    let out = run(
        Command::new(REXEC)
            .args([
                "--hosts-file",
                file,
                "-H",
                &daemons[0].addr,
                "--",
                "echo hi",
            ])
            .stdin(Stdio::null()),
        b"",
    );
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
}

#[test]
fn a_missing_hosts_file_exits_2_with_a_message() {
    let dir = scratch_dir("hosts-missing");
    let missing = dir.join("no-such-file");
    let out = run(
        Command::new(REXEC)
            .args([
                "--hosts-file",
                missing.to_str().expect("path"),
                "--",
                "true",
            ])
            .stdin(Stdio::null()),
        b"",
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read hosts file") && out.stderr.contains("no-such-file"),
        "{}",
        out.stderr
    );
    let empty = dir.join("empty");
    std::fs::write(&empty, "# nothing here\n\n").expect("write");
    let out = run(
        Command::new(REXEC)
            .args(["--hosts-file", empty.to_str().expect("path"), "--", "true"])
            .stdin(Stdio::null()),
        b"",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no hosts in"), "{}", out.stderr);
}

#[test]
fn fleet_flags_without_hosts_or_command_are_refused() {
    let out = run(Command::new(REXEC).args(["--group", "--", "true"]), b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(Command::new(REXEC).args(["-H", "127.0.0.1:1"]), b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("needs a command"), "{}", out.stderr);
    let out = run(
        Command::new(REXEC).args(["-H", "127.0.0.1:1", "-t", "--", "true"]),
        b"",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn a_closed_stdout_stops_the_fan_out() {
    let daemons = three();
    let mut child = fleet(addrs(&daemons))
        .args(["--", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rexec");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("one line");
    assert!(line.ends_with(" | y\n"), "{line:?}");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rexec kept running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(141));
}

/// Runs `rexec ARGS` on a pseudo-terminal (util-linux `script`), so stdout and
/// stderr are terminals; returns the exit code and everything the terminal got.
fn on_terminal(args: &str, no_color: bool) -> (i32, String) {
    let mut command = Command::new("script");
    command
        .args(["-qec", &format!("{REXEC} {args}"), "/dev/null"])
        .env_remove("NO_COLOR");
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let out = output_within(&mut command, b"", LIMIT);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_prefixes_are_coloured_and_progress_is_shown() {
    let daemons = three();
    let dead = dead_port();
    let mut hosts: String = addrs(&daemons).iter().map(|h| format!("-H {h} ")).collect();
    hosts.push_str(&format!("-H {dead}"));
    let (code, screen) = on_terminal(&format!("{hosts} -- 'echo hi; sleep 0.3'"), false);
    assert_eq!(code, 255, "{screen}");
    for daemon in &daemons {
        let coloured = format!("{}\x1b[0m | hi", daemon.addr);
        assert!(screen.contains(&coloured), "{screen:?}");
    }
    assert!(screen.contains("hosts done"), "progress line: {screen:?}");
    assert!(screen.contains("1 of 4 hosts failed"), "{screen:?}");

    let (code, screen) = on_terminal(&format!("{hosts} -- 'echo hi'"), true);
    assert_eq!(code, 255, "{screen}");
    let plain = format!("{} | hi", daemons[1].addr);
    assert!(
        screen.contains(&plain),
        "NO_COLOR: plain prefix: {screen:?}"
    );
    assert!(!screen.contains("\x1b[0m | "), "{screen:?}");
}

#[test]
fn ctrl_c_cancels_every_host_and_the_summary_says_who_finished() {
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start()).collect();
    let dead = dead_port();
    let dir = scratch_dir("fanout-int");
    let (sleep, needle) = common::unique_sleep(33);
    // The first host to get here finishes; the other prints half a line and sleeps.
    let script = format!(
        "mkdir {}/first 2>/dev/null && {{ echo fast; exit 0; }}; printf half-a-line; {sleep}",
        dir.display()
    );
    let mut hosts = addrs(&daemons);
    hosts.push(&dead);
    let mut child = fleet(hosts)
        .args(["--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(common::eventually(Duration::from_secs(10), || {
        !common::processes_matching(&needle).is_empty()
    }));
    // Let the finished and the unreachable host be reported first.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let exited = common::eventually(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(exited, "fan-out ended after Ctrl-C: {stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stdout.contains(" | fast\n"), "{stdout}");
    assert!(
        stdout.contains(" | half-a-line\n"),
        "the partial line is written with its newline: {stdout:?}"
    );
    assert!(
        stderr.contains("1 of 3 hosts finished, 1 failed, 1 interrupted"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{dead}: cannot connect")),
        "{stderr}"
    );
    assert!(
        common::eventually(Duration::from_secs(10), || {
            common::processes_matching(&needle).is_empty()
        }),
        "the interrupted host's command was cancelled"
    );
}
