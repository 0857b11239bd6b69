//! `rexec cp` from the Windows client: rexec.exe under wine copies to and
//! from the real Linux rexecd over the Files API. Local paths are Windows
//! paths here (wine maps `Z:\` to `/`), remote ones stay `:PATH` on Linux.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::temporaries;
use common::wine::{Run, rexec_at, rexec_exe_command, run};
use common::{Daemon, random_file, scratch_dir, sha256_file};

fn daemon_in(tag: &str) -> (Daemon, PathBuf) {
    common::files::daemon_in(tag, &[])
}

/// `rexec.exe --addr A cp ARGS...`, run from `cwd`, as a Windows user would
/// from a directory of theirs.
fn cp(daemon: &Daemon, cwd: &Path, args: &[&str]) -> Run {
    run(
        rexec_at(&daemon.addr).current_dir(cwd).arg("cp").args(args),
        b"",
    )
}

fn assert_ok(out: &Run) {
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
}

/// Exit 1 with one line on stderr that contains every `words`.
fn assert_failed(out: &Run, words: &[&str]) {
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    for word in words {
        assert!(out.stderr.contains(word), "{word:?} not in {}", out.stderr);
    }
}

/// `diff -r A B` says the trees are the same.
fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .args([a, b])
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_file_goes_up_and_down_intact_with_windows_paths() {
    let (daemon, remote) = daemon_in("wincp-file");
    let local = scratch_dir("wincp-file-local");
    std::fs::create_dir(local.join("in")).unwrap();
    let source = random_file(&local.join("in"), "data.bin", 24 << 20);

    // A relative Windows path with backslashes, to a relative remote path.
    assert_ok(&cp(&daemon, &local, &["in\\data.bin", ":up.bin"]));
    assert_eq!(sha256_file(&remote.join("up.bin")), sha256_file(&source));

    // Down into an existing directory, named the Windows way (Z: is /).
    let into = format!("Z:{}", local.join("in").display()).replace('/', "\\");
    assert_ok(&cp(&daemon, &local, &[":up.bin", &into]));
    assert_eq!(sha256_file(&local.join("in/up.bin")), sha256_file(&source));
    assert!(temporaries(&local).is_empty(), "{:?}", temporaries(&local));
}

#[test]
fn a_tree_goes_up_and_down() {
    let (daemon, remote) = daemon_in("wincp-tree");
    let local = scratch_dir("wincp-tree-local");
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("top.txt"), "top\r\n").unwrap();
    std::fs::write(tree.join("sub/deeper/leaf.txt"), "leaf\n".repeat(5000)).unwrap();
    random_file(&tree.join("sub"), "blob.bin", 3 << 20);

    assert_ok(&cp(&daemon, &local, &["-r", "tree", ":"]));
    assert_same_tree(&tree, &remote.join("tree"));

    let back = local.join("back");
    std::fs::create_dir(&back).unwrap();
    assert_ok(&cp(&daemon, &local, &["-r", ":tree", "back"]));
    assert_same_tree(&tree, &back.join("tree"));

    // Without -r a directory is refused, naming it.
    assert_failed(&cp(&daemon, &local, &["tree", ":again"]), &["tree", "-r"]);
    assert!(!remote.join("again").exists());
}

#[test]
fn a_symlink_is_made_as_a_link_or_refused_by_name_keeping_nothing() {
    let (daemon, remote) = daemon_in("wincp-link");
    let local = scratch_dir("wincp-link-local");
    let tree = remote.join("linked");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d/f.txt"), "f\n").unwrap();
    std::os::unix::fs::symlink("d/f.txt", tree.join("link")).unwrap();
    let out = cp(&daemon, &local, &["-r", ":linked", "."]);
    // Windows makes links only with a privilege, and wine 8 makes none
    // while reporting success: either the link arrives as a link, or the
    // copy fails naming it and keeps nothing.
    if out.code == 0 {
        let link = std::fs::read_link(local.join("linked/link")).unwrap();
        assert_eq!(link.to_string_lossy().replace('\\', "/"), "d/f.txt");
    } else {
        assert_failed(&out, &["link", "symbolic link"]);
        assert!(!local.join("linked").exists());
        assert!(temporaries(&local).is_empty(), "{:?}", temporaries(&local));
    }
}

#[test]
fn stdin_and_stdout_carry_one_file() {
    let (daemon, remote) = daemon_in("wincp-stdio");
    let local = scratch_dir("wincp-stdio-local");
    let up = run(
        rexec_at(&daemon.addr)
            .current_dir(&local)
            .args(["cp", "-", ":piped.txt"]),
        b"from a Windows pipe\r\n",
    );
    assert_ok(&up);
    assert_eq!(
        std::fs::read(remote.join("piped.txt")).unwrap(),
        b"from a Windows pipe\r\n"
    );
    // stdout is a pipe: the bytes unchanged, no console conversion.
    let down = cp(&daemon, &local, &[":piped.txt", "-"]);
    assert_ok(&down);
    assert_eq!(down.stdout, b"from a Windows pipe\r\n");
}

#[test]
fn preserve_keeps_the_modification_time() {
    let (daemon, remote) = daemon_in("wincp-times");
    let local = scratch_dir("wincp-times-local");
    std::fs::write(remote.join("old.txt"), "old\n").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(remote.join("old.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_ok(&cp(&daemon, &local, &["-p", ":old.txt", "kept.txt"]));
    assert_ok(&cp(&daemon, &local, &[":old.txt", "fresh.txt"]));
    let mtime = |path: PathBuf| std::fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(mtime(local.join("kept.txt")), old);
    assert_ne!(mtime(local.join("fresh.txt")), old);

    // And up: the remote copy gets the Windows file's time.
    assert_ok(&cp(&daemon, &local, &["-p", "kept.txt", ":up.txt"]));
    assert_eq!(mtime(remote.join("up.txt")), old);
}

#[test]
fn no_clobber_keeps_what_is_there() {
    let (daemon, remote) = daemon_in("wincp-clobber");
    let local = scratch_dir("wincp-clobber-local");
    std::fs::write(remote.join("a.txt"), "remote\n").unwrap();
    std::fs::write(local.join("a.txt"), "local\n").unwrap();
    assert_failed(
        &cp(&daemon, &local, &["--no-clobber", "a.txt", ":a.txt"]),
        &["a.txt"],
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("a.txt")).unwrap(),
        "remote\n"
    );
    // Down: the Windows rename that never replaces.
    assert_failed(
        &cp(&daemon, &local, &["--no-clobber", ":a.txt", "a.txt"]),
        &["a.txt"],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("a.txt")).unwrap(),
        "local\n"
    );
    assert_ok(&cp(&daemon, &local, &[":a.txt", "a.txt"]));
    assert_eq!(
        std::fs::read_to_string(local.join("a.txt")).unwrap(),
        "remote\n"
    );
    assert!(temporaries(&local).is_empty(), "{:?}", temporaries(&local));
}

#[test]
fn names_windows_would_misread_are_refused_and_nothing_is_kept() {
    let (daemon, remote) = daemon_in("wincp-names");
    let local = scratch_dir("wincp-names-local");
    // Legal on Linux; on Windows `\` would make a directory, `NUL` the
    // null device and `x:y` a stream of x.
    for (i, name) in ["back\\slash", "NUL.txt", "x:y"].iter().enumerate() {
        let tree = remote.join(format!("t{i}"));
        std::fs::create_dir_all(tree.join("ok")).unwrap();
        std::fs::write(tree.join("ok/fine.txt"), "fine\n").unwrap();
        std::fs::write(tree.join(name), "bad\n").unwrap();
        let out = cp(&daemon, &local, &["-r", &format!(":t{i}"), "."]);
        assert_failed(&out, &["Windows"]);
        assert!(
            !local.join(format!("t{i}")).exists(),
            "t{i} was kept after {name:?}"
        );
    }
    assert!(temporaries(&local).is_empty(), "{:?}", temporaries(&local));
    assert!(std::fs::read_dir(&local).unwrap().next().is_none());
}

#[test]
fn errors_exit_1_naming_the_path_and_a_dead_host_exits_255() {
    let (daemon, _remote) = daemon_in("wincp-errors");
    let local = scratch_dir("wincp-errors-local");
    std::fs::write(local.join("a.txt"), "a\n").unwrap();
    assert_failed(
        &cp(&daemon, &local, &["nowhere.txt", ":"]),
        &["nowhere.txt"],
    );
    assert_failed(
        &cp(&daemon, &local, &[":nowhere.txt", "x"]),
        &["nowhere.txt"],
    );
    assert!(!local.join("x").exists());
    // Both sides local: a usage error.
    assert_eq!(cp(&daemon, &local, &["a.txt", "b.txt"]).code, 2);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let out = run(
        rexec_at(&dead)
            .current_dir(&local)
            .args(["cp", "a.txt", ":"]),
        b"",
    );
    assert_eq!(out.code, 255, "stderr: {}", out.stderr);
}

#[test]
fn two_hosts_get_the_file_and_gather_back_per_host() {
    let hosts: Vec<(Daemon, PathBuf)> = (0..2)
        .map(|i| daemon_in(&format!("wincp-fleet{i}")))
        .collect();
    let local = scratch_dir("wincp-fleet-local");
    let data = random_file(&local, "data.bin", 2 << 20);
    let fleet = |args: &[&str]| {
        let mut command = rexec_exe_command();
        command.current_dir(&local);
        for (daemon, _) in &hosts {
            command.args(["-H", &daemon.addr]);
        }
        command.arg("cp").args(args);
        run(&mut command, b"")
    };
    assert_ok(&fleet(&["data.bin", ":data.bin"]));
    for (i, (_, dir)) in hosts.iter().enumerate() {
        assert_eq!(sha256_file(&dir.join("data.bin")), sha256_file(&data));
        std::fs::write(dir.join("own.txt"), format!("host {i}\n")).unwrap();
    }
    assert_ok(&fleet(&[":own.txt", "gathered"]));
    for (i, (daemon, _)) in hosts.iter().enumerate() {
        // `:` cannot be in a Windows name: the host's directory spells it %3A.
        let stem = daemon.addr.replace(':', "%3A");
        let got = std::fs::read_to_string(local.join("gathered").join(stem).join("own.txt"));
        assert_eq!(got.unwrap(), format!("host {i}\n"));
    }
}
