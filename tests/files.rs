//! `rexec cp` and the `rexec.v1.Files` API against the real binaries: big
//! files and trees both ways, `-p`, `--no-clobber`, `--run-as`, fleets, an
//! upload cut off midway, and the messages an outsider could send.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::files::{
    commit, daemon_in, data, end, entry, files_client, sha256, start, temporaries,
};
use common::{Daemon, eventually, output_within, random_file, scratch_dir, sha256_file};
use rexec::proto::files_client::FilesClient;
use rexec::proto::{FileEntry, FileType, UploadRequest, upload_request::Event};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

/// `rexec --addr A cp ARGS...`, run from `cwd`.
fn cp(daemon: &Daemon, cwd: &Path, args: &[&str]) -> Output {
    let mut command = daemon.rexec();
    command.current_dir(cwd).arg("cp").args(args);
    output_within(&mut command, b"", LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        text(&out.stderr)
    );
}

/// Exit 1 with one line on stderr that contains every `words`.
fn assert_failed(out: &Output, words: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line wanted: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} missing from {stderr:?}");
    }
}

/// `diff -r --no-dereference A B` says the trees are the same.
fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .args([a, b])
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}{}",
        a.display(),
        b.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A tree with a subdirectory, an executable, a symlink and an empty directory.
fn sample_tree(root: &Path) -> PathBuf {
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("top.txt"), "top\n").unwrap();
    std::fs::write(tree.join("sub/deeper/leaf.txt"), "leaf\n".repeat(1000)).unwrap();
    std::fs::write(tree.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("sub/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("deeper/leaf.txt", tree.join("sub/link")).unwrap();
    tree
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("CI").is_none(),
        "--run-as tests need root, and CI runs them as root"
    );
    root
}

#[test]
fn a_200_mib_random_file_goes_up_and_down_intact() {
    let (daemon, remote) = daemon_in("cp-big", &[]);
    let local = scratch_dir("cp-big-local");
    let original = random_file(&local, "big.bin", 200 << 20);
    let digest = sha256_file(&original);

    // A relative remote path lands in rexecd's working directory.
    assert_ok(&cp(&daemon, &local, &["big.bin", ":copy.bin"]));
    assert_eq!(sha256_file(&remote.join("copy.bin")), digest);

    assert_ok(&cp(&daemon, &local, &[":copy.bin", "back.bin"]));
    assert_eq!(sha256_file(&local.join("back.bin")), digest);
    assert!(temporaries(&remote).is_empty() && temporaries(&local).is_empty());
}

#[test]
fn a_tree_goes_up_and_down_with_links_modes_and_empty_dirs() {
    let (daemon, remote) = daemon_in("cp-tree", &[]);
    let local = scratch_dir("cp-tree-local");
    let tree = sample_tree(&local);

    // Without -r a directory is refused, naming it.
    assert_failed(&cp(&daemon, &local, &["tree", ":"]), &["tree", "-r"]);

    // An existing directory as DEST means "into".
    assert_ok(&cp(&daemon, &local, &["-r", "tree", ":"]));
    assert_same_tree(&tree, &remote.join("tree"));
    assert_eq!(mode_of(&remote.join("tree/sub/run.sh")), 0o755);
    assert!(remote.join("tree/sub/link").is_symlink());

    // A new name as DEST means "as".
    assert_ok(&cp(&daemon, &local, &["-r", ":tree", "again"]));
    assert_same_tree(&tree, &local.join("again"));
    assert!(local.join("again/sub/link").is_symlink());

    // Into an existing local directory, by a trailing slash.
    std::fs::create_dir(local.join("into")).unwrap();
    assert_ok(&cp(&daemon, &local, &["-R", ":tree/sub", "into/"]));
    assert_same_tree(&tree.join("sub"), &local.join("into/sub"));
}

#[test]
fn preserve_keeps_mode_and_mtime_and_plain_copies_get_fresh_times() {
    let (daemon, remote) = daemon_in("cp-preserve", &[]);
    let local = scratch_dir("cp-preserve-local");
    let file = local.join("old.txt");
    std::fs::write(&file, "old\n").unwrap();
    std::fs::set_permissions(&file, PermissionsExt::from_mode(0o640)).unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.789"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(touched.success());
    let mtime = std::fs::metadata(&file).unwrap().mtime();

    assert_ok(&cp(&daemon, &local, &["-p", "old.txt", ":kept.txt"]));
    let kept = std::fs::metadata(remote.join("kept.txt")).unwrap();
    assert_eq!((kept.mtime(), kept.mode() & 0o7777), (mtime, 0o640));

    assert_ok(&cp(&daemon, &local, &["-p", ":kept.txt", "back.txt"]));
    let back = std::fs::metadata(local.join("back.txt")).unwrap();
    assert_eq!((back.mtime(), back.mode() & 0o7777), (mtime, 0o640));

    assert_ok(&cp(&daemon, &local, &["old.txt", ":fresh.txt"]));
    let fresh = std::fs::metadata(remote.join("fresh.txt")).unwrap();
    assert!(fresh.mtime() > mtime + 3600, "mtime copied without -p");
}

#[test]
fn stdin_and_stdout_carry_one_file() {
    let (daemon, remote) = daemon_in("cp-stdio", &[]);
    let local = scratch_dir("cp-stdio-local");
    let mut up = daemon.rexec();
    up.current_dir(&local).args(["cp", "-", ":piped.txt"]);
    assert_ok(&output_within(&mut up, b"from a pipe\n", LIMIT));
    assert_eq!(
        std::fs::read_to_string(remote.join("piped.txt")).unwrap(),
        "from a pipe\n"
    );

    let down = cp(&daemon, &local, &[":piped.txt", "-"]);
    assert_ok(&down);
    assert_eq!(down.stdout, b"from a pipe\n");
}

#[test]
fn errors_name_the_path_and_exit_1_and_a_dead_host_exits_255() {
    let (daemon, remote) = daemon_in("cp-errors", &[]);
    let local = scratch_dir("cp-errors-local");
    std::fs::write(local.join("a.txt"), "a\n").unwrap();

    assert_failed(
        &cp(&daemon, &local, &["nowhere.txt", ":"]),
        &["nowhere.txt"],
    );
    assert_failed(
        &cp(&daemon, &local, &[":nowhere.txt", "x"]),
        &["nowhere.txt", "no such file"],
    );
    assert_failed(
        &cp(&daemon, &local, &["a.txt", ":no/such/dir/a.txt"]),
        &["no/such/dir"],
    );
    // A file where a directory is needed.
    std::fs::write(remote.join("plain"), "").unwrap();
    let out = cp(&daemon, &local, &["a.txt", ":plain/a.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!local.join("x").exists());

    // Usage errors are exit 2.
    let out = cp(&daemon, &local, &["a.txt", "b.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let mut dead = Command::new(common::REXEC);
    dead.current_dir(&local)
        .args(["--addr", "127.0.0.1:1", "cp", "a.txt", ":"]);
    let out = output_within(&mut dead, b"", LIMIT);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
}

#[test]
fn no_clobber_keeps_what_is_there() {
    let (daemon, remote) = daemon_in("cp-noclobber", &[]);
    let local = scratch_dir("cp-noclobber-local");
    std::fs::write(local.join("new.txt"), "new\n").unwrap();
    std::fs::write(remote.join("there.txt"), "there\n").unwrap();

    assert_failed(
        &cp(&daemon, &local, &["--no-clobber", "new.txt", ":there.txt"]),
        &["there.txt"],
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("there.txt")).unwrap(),
        "there\n"
    );
    assert!(temporaries(&remote).is_empty());

    assert_ok(&cp(&daemon, &local, &["new.txt", ":there.txt"]));
    assert_eq!(
        std::fs::read_to_string(remote.join("there.txt")).unwrap(),
        "new\n"
    );
}

#[test]
fn an_upload_killed_midway_leaves_nothing_behind() {
    let (daemon, remote) = daemon_in("cp-killed", &[]);
    let local = scratch_dir("cp-killed-local");
    let mut client = daemon
        .rexec()
        .current_dir(&local)
        .args(["cp", "-", ":half.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let chunk = vec![7u8; 1 << 20];
    // Written until the server has a temporary file with bytes in it.
    let started = eventually(LIMIT, || {
        use std::io::Write;
        stdin.write_all(&chunk).unwrap();
        temporaries(&remote)
            .iter()
            .any(|t| std::fs::metadata(t).is_ok_and(|m| m.len() > 0))
    });
    assert!(
        started,
        "no temporary file appeared in {}",
        remote.display()
    );
    client.kill().unwrap();
    client.wait().unwrap();
    drop(stdin);

    let cleaned = eventually(Duration::from_secs(20), || {
        temporaries(&remote).is_empty() && !remote.join("half.bin").exists()
    });
    assert!(
        cleaned,
        "left behind: {:?}",
        std::fs::read_dir(&remote).unwrap().collect::<Vec<_>>()
    );
    let failed = eventually(Duration::from_secs(10), || {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains(r#""audit":"transfer""#) && l.contains("CANCELLED"))
    });
    assert!(failed, "no failed transfer line: {}", daemon.log_text());
}

#[test]
fn a_tree_that_fails_midway_is_removed_whole() {
    let (daemon, remote) = daemon_in("cp-halftree", &[]);
    let local = scratch_dir("cp-halftree-local");
    let tree = sample_tree(&local);
    // Unreadable to nobody: the client fails while reading, after sending some.
    std::fs::write(tree.join("zzz-secret"), "secret\n").unwrap();
    std::fs::set_permissions(tree.join("zzz-secret"), PermissionsExt::from_mode(0o000)).unwrap();
    if !is_root() {
        return;
    }
    let out = output_within(
        Command::new("su").args([
            "nobody",
            "-s",
            "/bin/sh",
            "-c",
            &format!(
                "cd {} && REXEC_TOKEN={} {} --addr {} cp -r tree :",
                local.display(),
                common::local_token(),
                common::REXEC,
                daemon.addr
            ),
        ]),
        b"",
        LIMIT,
    );
    assert_failed(&out, &["zzz-secret"]);
    let cleaned = eventually(Duration::from_secs(20), || {
        !remote.join("tree").exists() && temporaries(&remote).is_empty()
    });
    assert!(cleaned, "a partial tree was left in {}", remote.display());
}

#[test]
fn run_as_writes_as_that_user_and_checks_paths_as_that_user() {
    if !is_root() {
        return;
    }
    let (daemon, _) = daemon_in("cp-runas", &["--run-as", "nobody"]);
    let local = scratch_dir("cp-runas-local");
    std::fs::write(local.join("mine.txt"), "mine\n").unwrap();
    let open = scratch_dir("cp-runas-open");
    std::fs::set_permissions(&open, PermissionsExt::from_mode(0o777)).unwrap();
    let closed = scratch_dir("cp-runas-closed");
    std::fs::set_permissions(&closed, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(closed.join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(closed.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();

    let target = format!(":{}/", open.display());
    assert_ok(&cp(&daemon, &local, &["mine.txt", &target]));
    let nobody: u32 = text(
        &Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(
        std::fs::metadata(open.join("mine.txt")).unwrap().uid(),
        nobody
    );

    let denied = format!(":{}/", closed.display());
    assert_failed(
        &cp(&daemon, &local, &["mine.txt", &denied]),
        &["ermission denied"],
    );
    assert!(!closed.join("mine.txt").exists() && temporaries(&closed).is_empty());
    let secret = format!(":{}/secret", closed.display());
    assert_failed(
        &cp(&daemon, &local, &[&secret, "got"]),
        &["ermission denied"],
    );
    assert!(!local.join("got").exists());
}

#[test]
fn three_hosts_each_get_the_file_and_gather_back_per_host() {
    let hosts: Vec<(Daemon, PathBuf)> = (0..3)
        .map(|i| daemon_in(&format!("cp-fleet{i}"), &[]))
        .collect();
    let local = scratch_dir("cp-fleet-local");
    let data = random_file(&local, "data.bin", 3 << 20);
    let digest = sha256_file(&data);
    let fleet = |args: &[&str]| {
        let mut command = Command::new(common::REXEC);
        command.current_dir(&local);
        for (daemon, _) in &hosts {
            command.args(["-H", &daemon.addr]);
        }
        command.arg("cp").args(args);
        output_within(&mut command, b"", LIMIT)
    };

    let out = fleet(&["data.bin", ":data.bin"]);
    assert_ok(&out);
    for (daemon, dir) in &hosts {
        assert_eq!(sha256_file(&dir.join("data.bin")), digest);
        // The fan-out's per-host line, naming the host.
        assert!(
            text(&out.stdout).contains(&daemon.addr),
            "{}",
            text(&out.stdout)
        );
    }

    // Each host's copy differs now; gathering keeps them apart.
    for (i, (_, dir)) in hosts.iter().enumerate() {
        std::fs::write(dir.join("own.txt"), format!("host {i}\n")).unwrap();
    }
    assert_ok(&fleet(&[":own.txt", "gathered"]));
    for (i, (daemon, _)) in hosts.iter().enumerate() {
        let stem = daemon.addr.replace(':', "%3A");
        let got = std::fs::read_to_string(local.join("gathered").join(stem).join("own.txt"));
        assert_eq!(got.unwrap(), format!("host {i}\n"));
    }

    // One host missing the file: the others still copy, exit 1, a summary.
    std::fs::remove_file(hosts[1].1.join("own.txt")).unwrap();
    let out = fleet(&[":own.txt", "again"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 of 3 hosts failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn each_transfer_is_one_audit_line() {
    let (daemon, _) = daemon_in("cp-audit", &[]);
    let local = scratch_dir("cp-audit-local");
    sample_tree(&local);
    assert_ok(&cp(&daemon, &local, &["-r", "tree", ":"]));
    assert_ok(&cp(&daemon, &local, &["-r", ":tree", "down"]));
    let lines: Vec<serde_json::Value> = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains(r#""audit":"transfer""#))
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, direction) in lines.iter().zip(["upload", "download"]) {
        assert_eq!(line["direction"], direction);
        assert_eq!(line["result"], "OK");
        // tree, sub, deeper, empty, top.txt, leaf.txt, run.sh, link
        assert_eq!(line["entries"], 8, "{line}");
        assert_eq!(line["bytes"], 4 + 5000 + 18, "{line}");
        assert!(line["principal"].is_string() && line["peer"].is_string());
        assert!(line["path"].as_str().unwrap().contains("tree"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_is_data_loss_and_nothing_is_kept() {
    let (daemon, remote) = daemon_in("files-digest", &[]);
    let mut client = files_client(&daemon).await;
    let messages = vec![
        start("x.bin"),
        entry("x.bin", FileType::File, 5),
        data(b"hello"),
        end(&sha256(b"hellp")),
    ];
    let status = client
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!remote.join("x.bin").exists() && temporaries(&remote).is_empty());

    // The right digest, and the same bytes are kept.
    let messages = vec![
        start("x.bin"),
        entry("x.bin", FileType::File, 5),
        data(b"hello"),
        end(&sha256(b"hello")),
        commit(),
    ];
    let result = client
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((result.entries, result.bytes), (1, 5));
    assert_eq!(std::fs::read(remote.join("x.bin")).unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_out_of_order_or_paths_that_escape_are_refused_and_write_nothing() {
    let (daemon, remote) = daemon_in("files-bad", &[]);
    let outside = scratch_dir("files-bad-outside");
    std::os::unix::fs::symlink(&outside, remote.join("link")).unwrap();
    let mut client = files_client(&daemon).await;
    let digest = sha256(b"x");
    let file = |path: &str| vec![entry(path, FileType::File, 1), data(b"x"), end(&digest)];
    let cases: Vec<(Vec<UploadRequest>, Code)> = vec![
        (vec![], Code::InvalidArgument),
        (file("a"), Code::InvalidArgument),
        (vec![start("a"), data(b"x")], Code::InvalidArgument),
        (vec![start("a"), start("a")], Code::InvalidArgument),
        (vec![start("a"), end(&digest)], Code::InvalidArgument),
        (
            [vec![start("")], file("../escape")].concat(),
            Code::InvalidArgument,
        ),
        (
            [vec![start("")], file("/etc/escape")].concat(),
            Code::InvalidArgument,
        ),
        (
            [vec![start("")], file("a/./b")].concat(),
            Code::InvalidArgument,
        ),
        (
            vec![start(""), entry("u", FileType::Unspecified, 0)],
            Code::InvalidArgument,
        ),
        // Too many bytes for the size announced.
        (
            vec![start("a"), entry("a", FileType::File, 1), data(b"xy")],
            Code::DataLoss,
        ),
        // An entry whose parent was not sent as a directory.
        (
            [vec![start("")], file("d/e")].concat(),
            Code::InvalidArgument,
        ),
        // Entries under a symlink sent in the same upload.
        (
            [
                vec![
                    start("t"),
                    entry("t", FileType::Directory, 0),
                    UploadRequest {
                        event: Some(Event::Entry(FileEntry {
                            path: "t/l".into(),
                            r#type: FileType::Symlink as i32,
                            link_target: outside.display().to_string(),
                            ..Default::default()
                        })),
                    },
                ],
                file("t/l/escape"),
            ]
            .concat(),
            Code::InvalidArgument,
        ),
        // A whole tree whose stream ends cleanly without commit, as a
        // client that failed midway may close it: nothing is kept.
        (
            [
                vec![start(""), entry("whole", FileType::Directory, 0)],
                file("whole/f"),
            ]
            .concat(),
            Code::Cancelled,
        ),
        // Anything after commit.
        (
            [vec![start("")], file("late"), vec![commit()], file("later")].concat(),
            Code::InvalidArgument,
        ),
        // Merging into an existing symlink that points elsewhere.
        (
            [
                vec![start(""), entry("link", FileType::Directory, 0)],
                file("link/escape"),
            ]
            .concat(),
            Code::FailedPrecondition,
        ),
    ];
    for (i, (messages, wanted)) in cases.into_iter().enumerate() {
        let status = client
            .upload(tokio_stream::iter(messages))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), wanted, "case {i}: {status:?}");
    }
    let left: Vec<_> = std::fs::read_dir(&remote)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["link"], "written: {left:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // The daemon still serves.
    let messages = [vec![start("")], file("fine"), vec![commit()]].concat();
    client.upload(tokio_stream::iter(messages)).await.unwrap();
    assert_eq!(std::fs::read(remote.join("fine")).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_need_the_token() {
    let (daemon, remote) = daemon_in("files-token", &[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FilesClient::new(channel);
    let messages = vec![
        start("x"),
        entry("x", FileType::File, 1),
        data(b"x"),
        end(&sha256(b"x")),
    ];
    let status = client
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!remote.join("x").exists());
    std::fs::write(remote.join("y"), "y").unwrap();
    let status = client
        .download(rexec::proto::DownloadRequest {
            path: "y".into(),
            recursive: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_does_not_grow_rexecd() {
    let (daemon, remote) = daemon_in("files-slow", &[]);
    random_file(&remote, "big.bin", 300 << 20);
    let mut client = files_client(&daemon).await;
    let before = common::rss_kib(daemon.pid());
    let mut stream = client
        .download(rexec::proto::DownloadRequest {
            path: "big.bin".into(),
            recursive: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(rexec::proto::download_response::Event::Entry(_))
    ));
    // The reader stops: what rexecd holds is its queue and the socket's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = common::rss_kib(daemon.pid()).saturating_sub(before);
    assert!(
        held < 64 << 10,
        "rexecd grew by {held} KiB for one stalled download"
    );
    let mut bytes = 0;
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(rexec::proto::download_response::Event::Data(data)) = message.event {
            bytes += data.len();
        }
    }
    assert_eq!(bytes, 300 << 20);
}
