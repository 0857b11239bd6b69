//! Fleet output and rollouts end to end: `--gather`, `--diff`, `--output-dir`,
//! `--batch`, `--max-failures` and the folded summary, against real rexecd
//! on 127.0.B.1..N (all of 127/8 is loopback), all on one port so that their
//! names fold as a user's `127.0.B.[1-N]:PORT` would.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXEC, output_within, scratch_dir};

const LIMIT: Duration = Duration::from_secs(60);

/// `n` daemons on `127.0.{block}.1..=n`, one port for all; each test has its
/// own block, so tests running at once never share an address.
struct Fleet {
    daemons: Vec<Daemon>,
    port: String,
    block: u8,
}

impl Fleet {
    fn start(block: u8, n: usize) -> Fleet {
        let first = Daemon::start_with(&["--listen", &format!("127.0.{block}.1:0")]);
        let port = first.addr.rsplit_once(':').expect("port").1.to_string();
        let mut daemons = vec![first];
        for i in 2..=n {
            let listen = format!("127.0.{block}.{i}:{port}");
            daemons.push(Daemon::start_with(&["--listen", &listen]));
        }
        Fleet {
            daemons,
            port,
            block,
        }
    }

    fn hosts(&self) -> Vec<&str> {
        self.daemons.iter().map(|d| d.addr.as_str()).collect()
    }

    /// The folded name of hosts `first..=last` (1-based), as rexec prints it.
    fn set(&self, first: usize, last: usize) -> String {
        let (block, port) = (self.block, &self.port);
        match first == last {
            true => format!("127.0.{block}.{first}:{port}"),
            false => format!("127.0.{block}.[{first}-{last}]:{port}"),
        }
    }

    /// A shell `case` on `$PPID` (the daemon's pid): host `i` (1-based) runs
    /// `arms[i]` when given, else `default`.
    fn per_host(&self, arms: &[(usize, &str)], default: &str) -> String {
        let mut script = String::from("case $PPID in ");
        for (host, arm) in arms {
            script.push_str(&format!("{}) {arm};; ", self.daemons[host - 1].pid()));
        }
        script.push_str(&format!("*) {default};; esac"));
        script
    }

    fn rexec(&self) -> Command {
        let mut command = Command::new(REXEC);
        for host in self.hosts() {
            command.args(["-H", host]);
        }
        command.env("NO_COLOR", "1").stdin(Stdio::null());
        command
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(command: &mut Command) -> Run {
    let out = output_within(command, b"", LIMIT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn header(hosts: &str, count: usize) -> String {
    format!("---------------\n{hosts} ({count})\n---------------\n")
}

#[test]
fn gather_prints_each_output_once_under_its_folded_hosts_largest_first() {
    let fleet = Fleet::start(11, 12);
    let script = fleet.per_host(
        &[
            (10, "echo beta; exit 3"),
            (11, "echo beta; exit 3"),
            (12, "echo gamma; echo oops >&2; exit 1"),
        ],
        "echo alpha",
    );
    let out = run(fleet.rexec().args(["-b", "--", &script]));
    assert_eq!(out.code, 3, "the largest remote code: {}", out.stderr);
    let expected = format!(
        "{}alpha\n{}beta\n{}gamma\n",
        header(&fleet.set(1, 9), 9),
        header(&fleet.set(10, 11), 2),
        header(&fleet.set(12, 12), 1)
    );
    assert_eq!(out.stdout, expected);
    // stderr is gathered apart, then the folded summary lists the failures.
    let expected = format!(
        "{}oops\nrexec: 3 of 12 hosts failed:\n  finished: {} (9)\n  {} (2): exit 3\n  {}: exit 1\n",
        header(&fleet.set(12, 12), 1),
        fleet.set(1, 9),
        fleet.set(10, 11),
        fleet.set(12, 12)
    );
    assert_eq!(out.stderr, expected);
}

#[test]
fn diff_shows_other_outputs_against_the_most_common() {
    let fleet = Fleet::start(12, 6);
    let odd = "printf 'a\\nB\\nc\\n'";
    let script = fleet.per_host(&[(5, odd), (6, odd)], "printf 'a\\nb\\nc\\n'");
    let out = run(fleet.rexec().args(["--diff", "--", &script]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected = format!(
        "{}a\nb\nc\n--- {} (4)\n+++ {} (2)\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n",
        header(&fleet.set(1, 4), 4),
        fleet.set(1, 4),
        fleet.set(5, 6)
    );
    assert_eq!(out.stdout, expected);
    assert_eq!(out.stderr, "", "nothing failed, nothing to say");
}

#[test]
fn json_with_gather_ends_with_one_summary_record() {
    let fleet = Fleet::start(13, 5);
    let script = fleet.per_host(
        &[(2, "echo other; exit 4"), (4, "echo other; exit 4")],
        "echo same",
    );
    let out = run(fleet.rexec().args(["--json", "--diff", "--", &script]));
    assert_eq!(out.code, 4, "{}", out.stderr);
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(
        records.len(),
        6,
        "five hosts, then the summary: {}",
        out.stdout
    );
    for record in &records[..5] {
        assert!(record["host"].is_string(), "{record}");
    }
    let summary = &records[5]["summary"];
    assert_eq!(summary["total"], 5);
    assert_eq!(summary["exit"], 4);
    let three = format!("127.0.13.[1,3,5]:{}", fleet.port);
    assert_eq!(summary["finished"]["hosts"], three.as_str());
    assert_eq!(summary["finished"]["count"], 3);
    let failed = &summary["failed"][0];
    let two = format!("127.0.13.[2,4]:{}", fleet.port);
    assert_eq!(failed["hosts"], two.as_str(), "{summary}");
    assert_eq!(
        (failed["count"].clone(), failed["status"].clone()),
        (2.into(), "exit 4".into())
    );
    assert_eq!(failed["code"], 4);
    assert_eq!(summary["not_run"]["count"], 0);
    let stdout = summary["stdout"].as_array().expect("groups");
    assert_eq!(stdout.len(), 2, "{summary}");
    assert_eq!(stdout[0]["hosts"], three.as_str());
    assert_eq!(stdout[0]["output"], "same\n");
    assert_eq!(stdout[1]["count"], 2);
    let diff = stdout[1]["diff"].as_str().expect("diff");
    assert!(diff.contains("-same\n+other\n"), "{diff}");
    assert_eq!(summary["stderr"], serde_json::json!([]));
}

#[test]
fn output_dir_writes_each_hosts_streams_replacing_old_files_and_a_summary() {
    let fleet = Fleet::start(14, 3);
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.14.9:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let url = format!("http://{}", fleet.daemons[2].addr);
    let dir = scratch_dir("output-dir");
    let stem = |name: &str| name.replace(':', "%3A").replace('/', "%2F");
    // An earlier run's longer output must not survive.
    let first = stem(&fleet.daemons[0].addr);
    std::fs::write(dir.join(format!("{first}.out")), "stale\n".repeat(100)).unwrap();
    let mut command = Command::new(REXEC);
    for host in [&fleet.daemons[0].addr, &fleet.daemons[1].addr, &url, &dead] {
        command.args(["-H", host]);
    }
    let out = run(command.env("NO_COLOR", "1").stdin(Stdio::null()).args([
        "--output-dir",
        dir.to_str().expect("path"),
        "--",
        "echo out-$PPID; echo err >&2; printf partial",
    ]));
    assert_eq!(out.code, 255, "the dead host: {}", out.stderr);
    // The terminal still gets every host's lines.
    for host in [&fleet.daemons[0].addr, &fleet.daemons[1].addr, &url] {
        assert!(
            out.stdout.contains(&format!("{host} | partial\n")),
            "{}",
            out.stdout
        );
    }
    let read = |name: &str, suffix: &str| {
        std::fs::read_to_string(dir.join(format!("{}.{suffix}", stem(name))))
            .unwrap_or_else(|e| panic!("{name}.{suffix}: {e}"))
    };
    for (daemon, name) in
        fleet
            .daemons
            .iter()
            .zip([&fleet.daemons[0].addr, &fleet.daemons[1].addr, &url])
    {
        assert_eq!(
            read(name, "out"),
            format!("out-{}\npartial", daemon.pid()),
            "raw bytes"
        );
        assert_eq!(read(name, "err"), "err\n");
    }
    assert!(
        dir.join(format!("http%3A%2F%2F127.0.14.3%3A{}.out", fleet.port))
            .exists()
    );
    assert_eq!(
        (read(&dead, "out"), read(&dead, "err")),
        (String::new(), String::new())
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["exit"], 255);
    let hosts = summary["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 4);
    assert_eq!(hosts[0]["host"], fleet.daemons[0].addr.as_str());
    assert_eq!(hosts[0]["file"], first.as_str());
    assert_eq!(
        (hosts[0]["state"].as_str(), hosts[0]["exit"].as_i64()),
        (Some("finished"), Some(0))
    );
    assert_eq!(hosts[2]["host"], url.as_str());
    assert_eq!(hosts[3]["state"], "failed");
    let status = hosts[3]["status"].as_str().expect("status");
    assert!(status.starts_with("cannot connect"), "{status}");
    assert!(!dir.join(".summary.json.tmp").exists());
}

#[test]
fn output_dir_that_cannot_be_used_is_refused_before_anything_runs() {
    let fleet = Fleet::start(15, 1);
    let dir = scratch_dir("output-dir-bad");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let marker = common::unique_marker("never");
    for bad in [file.clone(), file.join("below"), "/proc/version/x".into()] {
        let out = run(fleet.rexec().args([
            "--output-dir",
            bad.to_str().expect("path"),
            "--",
            &format!("echo {marker}"),
        ]));
        assert_eq!(out.code, 2, "{bad:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "one clear line: {}",
            out.stderr
        );
        assert!(
            out.stderr.starts_with("rexec: --output-dir"),
            "{}",
            out.stderr
        );
        assert_eq!(out.stdout, "");
    }
    assert!(
        !fleet.daemons[0].log_text().contains(&marker),
        "nothing ran"
    );
}

/// Start and end times (ns) per daemon pid, from files each host wrote.
fn times(dir: &std::path::Path, suffix: &str) -> HashMap<u32, u128> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid = name.strip_suffix(suffix)?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            Some((pid, text.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn batch_starts_the_next_batch_only_when_the_whole_batch_has_finished() {
    let fleet = Fleet::start(16, 6);
    for (batch, size) in [("2", 2), ("50%", 3)] {
        let dir = scratch_dir("batch");
        // Hosts sleep for different times: a batch ends with its slowest.
        let script = format!(
            "date +%s%N > {d}/$PPID.start; sleep 0.$(( $PPID % 4 + 1 )); date +%s%N > {d}/$PPID.end",
            d = dir.display()
        );
        let out = run(fleet.rexec().args(["--batch", batch, "--", &script]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        let (starts, ends) = (times(&dir, ".start"), times(&dir, ".end"));
        let pids: Vec<u32> = fleet.daemons.iter().map(Daemon::pid).collect();
        assert_eq!((starts.len(), ends.len()), (6, 6), "every host ran once");
        let batches: Vec<&[u32]> = pids.chunks(size).collect();
        for pair in batches.windows(2) {
            let last_end = pair[0].iter().map(|p| ends[p]).max().unwrap();
            let next_start = pair[1].iter().map(|p| starts[p]).min().unwrap();
            assert!(
                last_end <= next_start,
                "--batch {batch}: a host of the next batch started {} ms before this batch ended",
                (last_end - next_start) / 1_000_000
            );
        }
    }
}

#[test]
fn max_failures_starts_no_host_after_k_failures_and_reports_them_not_run() {
    let fleet = Fleet::start(17, 6);
    let marker = common::unique_marker("ran");
    let script = format!("echo {marker}; exit 1");
    let out = run(fleet
        .rexec()
        .args(["--parallel", "1", "--max-failures", "2", "--", &script]));
    assert_eq!(
        out.code, 1,
        "not run adds nothing to the code: {}",
        out.stderr
    );
    let expected = format!(
        "rexec: 2 of 6 hosts failed, 4 not run:\n  not run: {} (4)\n  {} (2): exit 1\n",
        fleet.set(3, 6),
        fleet.set(1, 2)
    );
    assert_eq!(out.stderr, expected);
    assert!(common::eventually(Duration::from_secs(5), || {
        fleet.daemons[..2]
            .iter()
            .all(|d| d.log_text().contains(&marker))
    }));
    for daemon in &fleet.daemons[2..] {
        assert!(
            !daemon.log_text().contains("\"audit\":\"exec\""),
            "a not-run host ran"
        );
    }

    // Batches: the whole first batch runs (and fails); later ones never start.
    let out = run(fleet.rexec().args([
        "--json",
        "--batch",
        "2",
        "--max-failures",
        "1",
        "--",
        &script,
    ]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let records: HashMap<String, serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .map(|r| (r["host"].as_str().expect("host").to_string(), r))
        .collect();
    assert_eq!(records.len(), 6, "{}", out.stdout);
    for (i, daemon) in fleet.daemons.iter().enumerate() {
        let record = &records[&daemon.addr];
        match i {
            0 | 1 => assert_eq!(record["exit"], 1, "{record}"),
            _ => {
                assert_eq!(record["error"], "not run", "{record}");
                assert_eq!(record["exit"], serde_json::Value::Null);
            }
        }
    }
    for daemon in &fleet.daemons[2..] {
        assert!(
            !daemon.log_text().contains("\"audit\":\"exec\""),
            "a not-run host ran"
        );
    }
}

#[test]
fn rollout_and_output_flags_with_garbage_exit_2_with_one_line() {
    let dir = scratch_dir("garbage");
    let path = dir.join("out");
    let path = path.to_str().expect("path");
    for args in [
        &["--batch", "0"][..],
        &["--batch", "150%"],
        &["--batch", "0%"],
        &["--batch", "x"],
        &["--batch", "-2"],
        &["--batch", ""],
        &["--max-failures", "0"],
        &["--max-failures", "abc"],
        &["--max-failures", "-1"],
        &["--diff", "--group"],
        &["-b", "--group"],
    ] {
        let out = run(Command::new(REXEC)
            .args(["-H", "127.0.0.1:1"])
            .args(args)
            .args(["--output-dir", path, "--", "true"])
            .stdin(Stdio::null()));
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error:"), "{args:?}: {}", out.stderr);
    }
    assert!(!dir.join("out").exists(), "nothing was created");
    // Without hosts these flags mean nothing: refused, not ignored.
    for args in [&["-b"][..], &["--batch", "2"], &["--output-dir", path]] {
        let out = run(Command::new(REXEC)
            .args(args)
            .args(["--", "true"])
            .stdin(Stdio::null()));
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

#[test]
fn ctrl_c_during_a_batch_leaves_later_batches_not_run() {
    let fleet = Fleet::start(18, 4);
    let dir = scratch_dir("batch-int");
    let (sleep, needle) = common::unique_sleep(37);
    let mut child = fleet
        .rexec()
        .args([
            "--batch",
            "2",
            "--output-dir",
            dir.to_str().expect("path"),
            "--",
            &sleep,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rexec");
    assert!(common::eventually(Duration::from_secs(10), || {
        common::processes_matching(&needle).len() == 2
    }));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let exited = common::eventually(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "rexec ended after Ctrl-C: {stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let expected = format!(
        "rexec: after Ctrl-C: 0 of 4 hosts finished, 0 failed, 2 interrupted, 2 not run\n  \
         interrupted: {} (2)\n  not run: {} (2)\n\
         rexec: interrupted; remote command cancelled\n",
        fleet.set(1, 2),
        fleet.set(3, 4)
    );
    assert_eq!(stderr, expected);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let states: Vec<&str> = summary["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["interrupted", "interrupted", "not run", "not run"]);
    assert!(common::eventually(Duration::from_secs(10), || {
        common::processes_matching(&needle).is_empty()
    }));
    for daemon in &fleet.daemons[2..] {
        assert!(
            !daemon.log_text().contains("\"audit\":\"exec\""),
            "a later batch ran"
        );
    }
}

#[test]
fn gather_caps_each_hosts_output_and_says_it_was_cut() {
    let fleet = Fleet::start(19, 2);
    // 17 MiB of the same line from both hosts: one group, cut at 16 MiB.
    let script = "yes abcdefghijklmn | head -c 17825792";
    let out = output_within(fleet.rexec().args(["-b", "--", script]), b"", LIMIT);
    assert_eq!(out.status.code(), Some(0));
    let header = format!(
        "---------------\n{} (2), output cut at 16 MiB\n---------------\n",
        fleet.set(1, 2)
    );
    assert!(
        out.stdout.starts_with(header.as_bytes()),
        "{:?}",
        &out.stdout[..200]
    );
    let body = out.stdout.len() - header.len();
    assert_eq!(
        body,
        16 * 1024 * 1024 + 1,
        "16 MiB and the newline ending it"
    );
}
