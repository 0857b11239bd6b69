//! Fleet targeting as clush and pdsh users write it: `-w` NodeSets, `-x`,
//! `@groups` from ClusterShell's own configuration, NodeSet lines in a hosts
//! file, and `rexec nodes` — checked against ClusterShell's `nodeset` tool and
//! real rexecd on 127.0.1.N.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXEC, output_within, scratch_dir};

const LIMIT: Duration = Duration::from_secs(30);

/// ClusterShell's `nodeset`; in CI (`CI=true`) a missing one is a failure.
fn clustershell_nodeset() -> Option<&'static str> {
    let found = Command::new("nodeset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ClusterShell's nodeset is missing (Debian package clustershell; scripts/test-all installs it)"
        );
        eprintln!("skipping the comparison: no ClusterShell nodeset here");
        return None;
    }
    Some("nodeset")
}

/// A ClusterShell configuration of our own under $XDG_CONFIG_HOME, as a user
/// would write it: groups.conf naming a YAML source in groups.d.
fn group_config(port: u16) -> PathBuf {
    let xdg = scratch_dir("clustershell");
    let dir = xdg.join("clustershell");
    std::fs::create_dir_all(dir.join("groups.d")).unwrap();
    std::fs::write(
        dir.join("groups.conf"),
        "[Main]\ndefault: roles\nautodir: $CFGDIR/groups.d\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("groups.d/fleet.yaml"),
        format!(
            "roles:\n  web: '127.0.1.[11-13]:{port}'\n  db: '127.0.1.[14-15]:{port}'\n  \
             all: '@roles:web,@roles:db'\nracks:\n  r1: 'rack1-n[1-4]'\n"
        ),
    )
    .unwrap();
    xdg
}

fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text.split_whitespace().map(String::from).collect();
    words.sort();
    words
}

fn rexec_nodes(xdg: &Path, args: &[&str]) -> std::process::Output {
    Command::new(REXEC)
        .arg("nodes")
        .args(args)
        .env("XDG_CONFIG_HOME", xdg)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn nodesets_and_groups_expand_as_clustershell_expands_them() {
    let xdg = group_config(7000);
    let Some(nodeset) = clustershell_nodeset() else {
        return;
    };
    for expression in [
        "web[01-20]",
        "web[1-3,7]",
        "rack[1-2]-n[1-4]",
        "10.0.0.[1-50]",
        "web[1-9]!web[2-3]",
        "web[1-9]&web[5-12]",
        "web[1-3]^web[2-5]",
        "web[1-3],db[1-2]",
        "@web",
        "@roles:db",
        "@all",
        "@racks:r1",
        "@all!127.0.1.12:7000",
    ] {
        let ours = rexec_nodes(&xdg, &["-e", expression]);
        assert!(ours.status.success(), "{expression}: {ours:?}");
        let theirs = Command::new(nodeset)
            .args(["-e", expression])
            .env("XDG_CONFIG_HOME", &xdg)
            .output()
            .unwrap();
        assert!(theirs.status.success(), "{expression}: {theirs:?}");
        assert_eq!(
            words(&String::from_utf8_lossy(&ours.stdout)),
            words(&String::from_utf8_lossy(&theirs.stdout)),
            "{expression}"
        );
        let count = rexec_nodes(&xdg, &["-c", expression]);
        let theirs = Command::new(nodeset)
            .args(["-c", expression])
            .env("XDG_CONFIG_HOME", &xdg)
            .output()
            .unwrap();
        assert_eq!(count.stdout, theirs.stdout, "{expression}");
    }
    let folded = rexec_nodes(&xdg, &["web[01-20]!web07", "-x", "web[15-20]"]);
    assert_eq!(
        String::from_utf8_lossy(&folded.stdout),
        "web[01-06,08-14] (13)\n"
    );
}

#[test]
fn bad_nodesets_are_refused_before_anything_runs() {
    let xdg = group_config(7000);
    for (args, needle) in [
        (vec!["-w", "web["], "invalid NodeSet"),
        (vec!["-w", "web[1-5/0]"], "invalid NodeSet"),
        (vec!["-w", "web[1-200000]"], "at most 100000"),
        (vec!["-w", "@nosuch"], "names no hosts"),
        (vec!["-w", "web[1-2]", "-x", "web[1-2]"], "no hosts left"),
    ] {
        let out = Command::new(REXEC)
            .args(&args)
            .args(["--", "true"])
            .env("XDG_CONFIG_HOME", &xdg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Six rexecd on 127.0.1.[11-16], all on one port, as a fleet on 50051 would be.
fn fleet() -> (Vec<Daemon>, u16) {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.1.11:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free =
            (11..=16).all(|n| std::net::TcpListener::bind(format!("127.0.1.{n}:{port}")).is_ok());
        if free {
            let daemons = (11..=16)
                .map(|n| Daemon::start_with(&["--listen", &format!("127.0.1.{n}:{port}")]))
                .collect();
            return (daemons, port);
        }
    }
    panic!("no port free on all of 127.0.1.[11-16]");
}

fn ran_on(daemon: &Daemon, marker: &str) -> bool {
    daemon.log_text().contains(marker)
}

#[test]
fn w_x_groups_and_hosts_file_pick_the_hosts_that_run() {
    let (daemons, port) = fleet();
    let xdg = group_config(port);
    let marker = common::unique_marker("targets");
    let run = |args: &[&str]| {
        let mut command = Command::new(REXEC);
        command
            .args(args)
            .args(["--", &format!("echo {marker}")])
            .env("XDG_CONFIG_HOME", &xdg)
            .env("NO_COLOR", "1");
        let out = output_within(&mut command, b"", LIMIT);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    let expect = |hosts: &[u32]| -> Vec<String> {
        hosts
            .iter()
            .map(|n| format!("127.0.1.{n}:{port} | {marker}"))
            .collect()
    };
    let range = format!("127.0.1.[11-16]:{port}");
    let excluded = format!("127.0.1.[12,15]:{port}");
    assert_eq!(
        run(&["-w", &range, "-x", &excluded]),
        expect(&[11, 13, 14, 16])
    );
    assert!(!ran_on(&daemons[1], &marker) && !ran_on(&daemons[4], &marker));
    assert_eq!(run(&["-w", "@web"]), expect(&[11, 12, 13]));
    assert_eq!(run(&["-w", "@all", "-x", "@db"]), expect(&[11, 12, 13]));
    // A hosts file mixes NodeSet lines, single hosts and comments.
    let file = scratch_dir("targets-file").join("hosts");
    std::fs::write(
        &file,
        format!("# the db pair\n@db\n127.0.1.16:{port}   # one more\n\n"),
    )
    .unwrap();
    assert_eq!(
        run(&["--hosts-file", file.to_str().unwrap()]),
        expect(&[14, 15, 16])
    );
    // -H and -w together, each host once.
    let one = format!("127.0.1.11:{port}");
    assert_eq!(
        run(&["-H", &one, "-w", &format!("127.0.1.[11-12]:{port}")]),
        expect(&[11, 12])
    );
    // --list runs nothing.
    let out = Command::new(REXEC)
        .args(["-w", &range, "-x", &excluded, "--list"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("127.0.1.[11,13-14,16]:{port} (4)\n")
    );
}
