//! The tutorial's topology: a Windows client, a Linux server. `rexec.exe`
//! (cross-built by scripts/test-all for x86_64-pc-windows-gnu) runs under
//! wine against the real Linux rexecd on loopback. Wine and rexec.exe are
//! required: a missing one fails these tests, in CI and out of it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::terminal::Terminal;
use common::wine::{LIMIT, rexec_at, rexec_exe, rexec_exe_command, run, text, wine};
use common::{
    Daemon, eventually, local_token, processes_matching, random_file, scratch_dir, unique_marker,
    unique_sleep,
};

#[test]
fn exit_code_and_streams_arrive_apart() {
    let daemon = Daemon::start();
    let out = run(
        rexec_at(&daemon.addr).args(["--", "echo to-out; echo to-err >&2; exit 3"]),
        b"",
    );
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(out.stderr, "to-err\n");
}

#[test]
fn killed_by_a_signal_is_128_plus_n() {
    let daemon = Daemon::start();
    let out = run(rexec_at(&daemon.addr).args(["--", "kill -9 $$"]), b"");
    assert_eq!(out.code, 128 + 9, "stderr: {}", out.stderr);
    let out = run(rexec_at(&daemon.addr).args(["--", "kill -TERM $$"]), b"");
    assert_eq!(out.code, 128 + 15, "stderr: {}", out.stderr);
}

#[test]
fn connection_refused_is_255() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let out = run(rexec_at(&dead).args(["--", "true"]), b"");
    assert_eq!(out.code, 255, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

#[test]
fn a_bad_flag_is_exit_2_and_runs_nothing() {
    let daemon = Daemon::start();
    let dir = scratch_dir("windows-flag");
    let witness = dir.join("ran");
    let out = run(
        rexec_at(&daemon.addr).args([
            "--no-such-flag",
            "--",
            &format!("touch {}", witness.display()),
        ]),
        b"",
    );
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    assert!(!witness.exists(), "the command ran despite the bad flag");
}

#[test]
fn piped_stdin_is_streamed_then_closed() {
    let daemon = Daemon::start();
    // `tr` ends only when its stdin reaches EOF; then the shell goes on.
    let out = run(
        rexec_at(&daemon.addr).args(["--", "tr a-z A-Z; echo after-eof"]),
        b"hello\nwindows\n",
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(text(&out.stdout), "HELLO\nWINDOWS\nafter-eof\n");
}

#[test]
fn sixty_four_mib_redirected_to_a_file_arrive_intact() {
    let daemon = Daemon::start();
    let dir = scratch_dir("windows-bulk");
    let source = random_file(&dir, "random.bin", 64 << 20);
    let received = dir.join("received.bin");
    // stdout is a file, as `rexec.exe ... > out.bin` in cmd: raw bytes, unchanged.
    let status = rexec_at(&daemon.addr)
        .args(["--", &format!("cat {}", source.display())])
        .stdout(std::fs::File::create(&received).expect("create received"))
        .stderr(Stdio::inherit())
        .status()
        .expect("run rexec.exe");
    assert_eq!(status.code(), Some(0));
    let (sent, got) = (
        std::fs::read(&source).expect("read source"),
        std::fs::read(&received).expect("read received"),
    );
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "64 MiB came back changed");
}

/// "你好" in GBK, as printf writes it on the server.
const GBK_NIHAO: &str = r"printf '\304\343\272\303\n'";

#[test]
fn gbk_output_is_transcoded_and_raw_bytes_pass_unchanged() {
    let daemon = Daemon::start();
    let out = run(
        rexec_at(&daemon.addr).args(["--encoding", "gbk", "--", GBK_NIHAO]),
        b"",
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(text(&out.stdout), "你好\n");
    // Without --encoding a pipe gets the remote bytes as they are.
    let out = run(rexec_at(&daemon.addr).args(["--", GBK_NIHAO]), b"");
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, [0xc4, 0xe3, 0xba, 0xc3, b'\n']);
}

#[test]
fn legacy_protocol_keeps_streams_code_and_stdin() {
    let daemon =
        Daemon::start_with(&["--legacy-listen", "127.0.0.1:0", "--legacy-allow-anonymous"]);
    let legacy = daemon.legacy_addr.clone().expect("legacy address");
    let out = run(
        rexec_at(&legacy).args(["--legacy", "--", "tr a-z A-Z; echo legacy-err >&2; exit 4"]),
        b"over the old protocol\n",
    );
    assert_eq!(out.code, 4, "stderr: {}", out.stderr);
    assert_eq!(text(&out.stdout), "OVER THE OLD PROTOCOL\n");
    assert_eq!(out.stderr, "legacy-err\n");
}

#[test]
fn fan_out_runs_on_every_host() {
    let (first, second) = (Daemon::start(), Daemon::start());
    let marker = unique_marker("fan");
    let out = run(
        rexec_exe_command().args([
            "-H",
            &first.addr,
            "-H",
            &second.addr,
            "--",
            &format!("echo {marker}"),
        ]),
        b"",
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let stdout = text(&out.stdout);
    for addr in [&first.addr, &second.addr] {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(addr.as_str()) && line.ends_with(&marker)),
            "no line from {addr}: {stdout}"
        );
    }
}

#[tokio::test]
async fn repl_on_a_terminal_keeps_cd_reports_failures_and_quits() {
    let daemon = Daemon::start();
    let wine = wine();
    let exe = rexec_exe();
    let token = local_token();
    let prefix = wine.prefix.to_string_lossy().into_owned();
    let dir = scratch_dir("windows-repl");
    let dir_text = dir.to_string_lossy().into_owned();
    let mut terminal = Terminal::spawn_program(
        &wine.program.to_string_lossy(),
        &[&exe.to_string_lossy()],
        &[
            ("WINEPREFIX", &prefix),
            ("WINEDEBUG", "-all"),
            ("REXEC_TOKEN", &token),
        ],
        &daemon.addr,
        &[],
        24,
        100,
    );
    terminal.keep_carriage_returns();
    // Wine's console draws the screen with cursor moves (a trailing space
    // comes out as `ESC[1C`), so the prompt is matched up to its `>`.
    terminal.expect("rexec>").await;
    terminal.type_text(&format!("cd {dir_text}\r")).await;
    terminal.expect(&format!("{dir_text}>")).await;
    // `$(pwd)` is expanded remotely: only the output has the path after "at:".
    terminal.type_text("echo \"at:$(pwd)\"; exit 3\r").await;
    terminal.expect(&format!("at:{dir_text}")).await;
    let after = plain(&terminal.expect(&format!("{dir_text}>")).await);
    assert!(
        after.contains("[exit 3]"),
        "no [exit 3] before the prompt: {after:?}"
    );
    terminal.type_text("quit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}

/// rexec.exe on a pty of ours, which wine makes its console: `--addr`, then `args`.
fn console(daemon: &Daemon, args: &[&str]) -> Terminal {
    let wine = wine();
    let prefix = wine.prefix.to_string_lossy().into_owned();
    let terminal = Terminal::spawn_program(
        &wine.program.to_string_lossy(),
        &[&rexec_exe().to_string_lossy()],
        &[
            ("WINEPREFIX", &prefix),
            ("WINEDEBUG", "-all"),
            ("REXEC_TOKEN", &local_token()),
            // Wine's console writes to the pty in the locale's character set.
            ("LC_ALL", "C.UTF-8"),
        ],
        &daemon.addr,
        args,
        24,
        100,
    );
    terminal.keep_carriage_returns();
    terminal
}

#[tokio::test]
async fn a_console_shows_text_whatever_bytes_arrive() {
    let daemon = Daemon::start();
    // std refuses to write bytes that are not UTF-8 to a Windows console: the
    // stray 0xff must become U+FFFD, not end rexec with an output error.
    let mut terminal = console(
        &daemon,
        &["--", r"printf 'bad \377 byte\n'; echo end-$((6*7))"],
    );
    let shown = plain(&terminal.expect("end-42").await);
    assert!(shown.contains("bad \u{fffd} byte"), "{shown:?}");
    assert_eq!(terminal.exit_code().await, Some(0));
    // --encoding on a console: GBK from the server reads as Chinese.
    let mut terminal = console(&daemon, &["--encoding", "gbk", "--", GBK_NIHAO]);
    terminal.expect("你好").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}

#[tokio::test]
async fn repl_history_is_kept_under_appdata() {
    let daemon = Daemon::start();
    let marker = unique_marker("hist");
    let wine = wine();
    let prefix = wine.prefix.to_string_lossy().into_owned();
    // An empty REXEC_HISTORY counts as unset: the Windows default is used.
    let mut terminal = Terminal::spawn_program(
        &wine.program.to_string_lossy(),
        &[&rexec_exe().to_string_lossy()],
        &[
            ("WINEPREFIX", &prefix),
            ("WINEDEBUG", "-all"),
            ("REXEC_TOKEN", &local_token()),
            ("REXEC_HISTORY", ""),
        ],
        &daemon.addr,
        &[],
        24,
        100,
    );
    terminal.keep_carriage_returns();
    terminal.expect("rexec>").await;
    terminal.type_text(&format!("echo {marker}\r")).await;
    terminal.expect(&format!("{marker}\r")).await;
    terminal.type_text("quit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
    // Wine's %APPDATA% is drive_c/users/USER/AppData/Roaming in the prefix.
    let users = wine.prefix.join("drive_c/users");
    let kept = std::fs::read_dir(&users)
        .expect("the prefix's users")
        .flatten()
        .map(|user| user.path().join("AppData/Roaming/rexec/history"))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .any(|history| history.contains(&format!("echo {marker}")));
    assert!(kept, "no history with the line under {}", users.display());
}

/// Waits until the remote `sleep` that `needle` finds runs (or has gone).
fn remote_sleep(needle: &str, running: bool) -> bool {
    eventually(LIMIT, || processes_matching(needle).is_empty() != running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_console_is_int_and_a_second_cancels() {
    let daemon = Daemon::start();
    // Ctrl-C typed on wine's console is a CTRL_C_EVENT for rexec.exe, which
    // it passes on as INT: the remote trap runs and the loop goes on.
    let (sleep, needle) = unique_sleep(41);
    let command = format!("trap 'echo got-int' INT; echo ready; while :; do {sleep}; done");
    let mut terminal = console(&daemon, &["--", &command]);
    terminal.expect("ready").await;
    assert!(remote_sleep(&needle, true), "the remote sleep never ran");
    terminal.type_text("\x03").await;
    terminal.expect("got-int").await;
    // A second press within two seconds of another gives up on the call: the
    // server kills the group, rexec.exe says so and exits 130, as on Unix.
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminal.type_text("\x03").await;
    terminal.expect("cancelled").await;
    assert_eq!(terminal.exit_code().await, Some(130));
    assert!(
        remote_sleep(&needle, false),
        "the cancelled command still runs: {}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_the_repl_stops_the_command_and_the_repl_goes_on() {
    let daemon = Daemon::start();
    let (sleep, needle) = unique_sleep(42);
    let mut terminal = console(&daemon, &[]);
    terminal.expect("rexec>").await;
    terminal.type_text(&format!("{sleep}\r")).await;
    assert!(remote_sleep(&needle, true), "the remote sleep never ran");
    terminal.type_text("\x03").await;
    // Wine draws "[killed by signal INT]" with cursor moves between words.
    let shown = plain(&terminal.expect("rexec>").await);
    assert!(shown.contains("[killed by signal INT]"), "{shown:?}");
    assert!(remote_sleep(&needle, false), "INT did not stop the sleep");
    terminal.type_text("echo still-$((20+22))\r").await;
    terminal.expect("still-42").await;
    terminal.expect("rexec>").await;
    terminal.type_text("quit\r").await;
    assert_eq!(terminal.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_t_gives_a_remote_terminal_of_the_console_size() {
    let daemon = Daemon::start();
    let mut terminal = console(&daemon, &["-t", "--", "sh"]);
    terminal
        .type_text("tty; stty size; echo \"term=$TERM\"\r")
        .await;
    terminal.expect("/dev/pts/").await;
    // console() makes a 24x100 terminal; wine's console has its size.
    terminal.expect("24 100").await;
    terminal.expect("term=xterm-test").await;
    // In raw mode Ctrl-C is a byte for the remote terminal, not a signal for
    // rexec.exe: the remote shell stops its sleep and reads the next line.
    let (sleep, needle) = unique_sleep(43);
    terminal.type_text(&format!("{sleep}\r")).await;
    assert!(remote_sleep(&needle, true), "the remote sleep never ran");
    terminal.type_text("\x03").await;
    assert!(
        remote_sleep(&needle, false),
        "^C did not reach the remote pty"
    );
    terminal.type_text("echo after-$((6*7))\r").await;
    terminal.expect("after-42").await;
    terminal.type_text("exit 5\r").await;
    assert_eq!(terminal.exit_code().await, Some(5));
}

/// What a screen shows: cursor-forward moves (`ESC[NC`) as N spaces, other
/// escape sequences dropped.
fn plain(screen: &str) -> String {
    let mut shown = String::new();
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            shown.push(c);
            continue;
        }
        if chars.peek() != Some(&'[') {
            continue;
        }
        chars.next();
        let mut params = String::new();
        while let Some(&p) = chars.peek() {
            chars.next();
            if p.is_ascii_alphabetic() || p == '~' {
                if p == 'C' {
                    let n = params.parse().unwrap_or(1);
                    shown.extend(std::iter::repeat_n(' ', n));
                }
                break;
            }
            params.push(p);
        }
    }
    shown
}
