//! `rexecd --legacy-compat DIALECT=ADDR`: the tutorial's earlier servers
//! (raw, length-ready, fixed-header, udp). Each is driven by its own
//! tutorial client as written there (tests/tutorial/), and by exact readers
//! for what those clients cannot check (large output, refusals, bad input).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, REXECD, eventually, output_within, processes_matching, unique_marker};

/// Generous: only a hung server or a lost answer should ever hit it.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// rexecd with one listener per dialect named, in that order.
fn dialect_daemon(dialects: &[&str], extra: &[&str]) -> Daemon {
    let mut args = vec!["--legacy-allow-anonymous".to_string()];
    for dialect in dialects {
        args.push("--legacy-compat".into());
        args.push(format!("{dialect}=127.0.0.1:0"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_with(&args)
}

fn addr(daemon: &Daemon, dialect: &str) -> String {
    daemon
        .compat
        .iter()
        .find(|(name, _)| name == dialect)
        .map(|(_, addr)| addr.clone())
        .unwrap_or_else(|| panic!("readiness line names no legacy-{dialect}"))
}

fn connect(daemon: &Daemon, dialect: &str) -> TcpStream {
    let stream = TcpStream::connect(addr(daemon, dialect)).expect("connect");
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
}

/// Runs a tutorial client with these lines typed at its prompt, then `quit`.
fn tutorial_client(daemon: &Daemon, dialect: &str, lines: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tutorial")
        .join(format!("{}_client.py", dialect.replace('-', "_")));
    let port = addr(daemon, dialect)
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let mut typed = lines.join("\n");
    typed.push_str("\nquit\n");
    let output = output_within(
        Command::new("python3").arg(&script).arg(port),
        typed.as_bytes(),
        READ_LIMIT,
    );
    assert!(
        output.status.success(),
        "{dialect} client failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log_text()
    );
    String::from_utf8(output.stdout).expect("the client printed text")
}

/// What every tutorial client types: stdout and stderr of one command, a
/// command that writes only to stderr, and a second command on the same
/// connection.
const LINES: [&str; 3] = ["echo out; echo err >&2", "echo only-err >&2", "echo two"];

#[test]
fn readiness_line_names_each_dialect_in_the_order_given() {
    let daemon = dialect_daemon(&["fixed-header", "raw", "udp", "length-ready"], &[]);
    let names: Vec<&str> = daemon.compat.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fixed-header", "raw", "udp", "length-ready"]);
    let mut ports: Vec<&str> = daemon.compat.iter().map(|(_, a)| a.as_str()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 4, "{:?}", daemon.compat);
}

#[test]
fn the_raw_tutorial_client_reads_stdout_then_stderr() {
    let daemon = dialect_daemon(&["raw"], &[]);
    let printed = tutorial_client(&daemon, "raw", &LINES);
    assert_eq!(printed, ">>: out\nerr\n>>: only-err\n>>: two\n>>: ");
    assert!(daemon.log_text().contains(r#""listener":"legacy-raw""#));
}

#[test]
fn the_length_ready_tutorial_client_gets_both_streams_counted() {
    let daemon = dialect_daemon(&["length-ready"], &[]);
    let printed = tutorial_client(&daemon, "length-ready", &LINES);
    assert_eq!(printed, ">>: out\nerr\n\n>>: only-err\n\n>>: two\n\n>>: ");
    assert!(
        daemon
            .log_text()
            .contains(r#""listener":"legacy-length-ready""#)
    );
}

#[test]
fn the_fixed_header_tutorial_client_reads_its_100_byte_header() {
    let daemon = dialect_daemon(&["fixed-header"], &[]);
    let printed = tutorial_client(&daemon, "fixed-header", &LINES);
    assert_eq!(
        printed,
        ">>: received res size  8\nout\nerr\n>>: received res size  9\nonly-err\n\
         >>: received res size  4\ntwo\n>>: "
    );
    assert!(
        daemon
            .log_text()
            .contains(r#""listener":"legacy-fixed-header""#)
    );
}

#[test]
fn the_udp_tutorial_client_gets_one_datagram_per_command() {
    let daemon = dialect_daemon(&["udp"], &[]);
    let printed = tutorial_client(&daemon, "udp", &LINES);
    assert_eq!(printed, ">>: out\nerr\n>>: only-err\n>>: two\n>>: ");
    assert!(daemon.log_text().contains(r#""listener":"legacy-udp""#));
}

/// `seq 1 N` as the command prints it.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).expect("the whole answer");
    bytes
}

/// Reads a fixed-header answer: the 100-byte JSON header, then its body.
fn read_fixed(stream: &mut TcpStream) -> (serde_json::Value, Vec<u8>) {
    let header = read_exactly(stream, 100);
    let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON header");
    let fill = header["fill"].as_str().expect("fill");
    assert!(fill.bytes().all(|b| b == b'0'), "{header}");
    let length = header["length"].as_u64().expect("length") as usize;
    (header, read_exactly(stream, length))
}

/// Reads a length-ready answer: the ASCII length, `recv_ready`, the body.
fn read_length_ready(stream: &mut TcpStream) -> Vec<u8> {
    let mut digits = [0u8; 32];
    let n = stream.read(&mut digits).expect("the length");
    let length: usize = std::str::from_utf8(&digits[..n])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("not a length: {:?}", &digits[..n]));
    stream.write_all(b"recv_ready").unwrap();
    read_exactly(stream, length)
}

/// What `Read::read_to_end` gets; the server must close, not hang.
fn rest_of(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => rest,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => rest,
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

#[test]
fn large_output_arrives_whole_in_every_tcp_dialect() {
    let daemon = dialect_daemon(&["raw", "length-ready", "fixed-header"], &[]);
    let expected = seq(200_000);
    let command = b"seq 1 200000; echo tail >&2";
    let mut with_tail = expected.clone();
    with_tail.extend_from_slice(b"tail\n");

    let mut raw = connect(&daemon, "raw");
    raw.write_all(command).unwrap();
    assert!(read_exactly(&mut raw, with_tail.len()) == with_tail);
    // Nothing more came with it: the next command's answer follows at once.
    raw.write_all(b"echo next").unwrap();
    assert_eq!(read_exactly(&mut raw, 5), b"next\n");

    let mut ready = connect(&daemon, "length-ready");
    ready.write_all(command).unwrap();
    assert!(read_length_ready(&mut ready) == with_tail);
    ready.write_all(b"echo next").unwrap();
    assert_eq!(read_length_ready(&mut ready), b"next\n");

    let mut fixed = connect(&daemon, "fixed-header");
    fixed.write_all(command).unwrap();
    let (header, body) = read_fixed(&mut fixed);
    assert_eq!(header["length"], with_tail.len());
    assert!(body == with_tail);
}

fn udp_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(READ_LIMIT)).unwrap();
    socket
}

fn udp_ask(socket: &UdpSocket, daemon: &Daemon, datagram: &[u8]) -> Vec<u8> {
    socket.send_to(datagram, addr(daemon, "udp")).unwrap();
    receive(socket)
}

fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buffer = vec![0u8; 70_000];
    let (n, _) = socket.recv_from(&mut buffer).expect("an answer datagram");
    buffer.truncate(n);
    buffer
}

#[test]
fn a_udp_answer_is_cut_at_the_datagram_limit_and_bad_datagrams_get_no_run() {
    let daemon = dialect_daemon(&["udp"], &[]);
    let socket = udp_socket();
    let answer = udp_ask(&socket, &daemon, b"seq 1 20000");
    assert_eq!(answer.len(), 65_507, "the largest IPv4 UDP payload");
    assert!(answer == seq(20_000)[..65_507]);

    // An empty datagram gets an empty one back, as the tutorial's server answers "".
    assert_eq!(udp_ask(&socket, &daemon, b""), b"");
    let bad = String::from_utf8(udp_ask(&socket, &daemon, b"echo \xff\xfe")).unwrap();
    assert!(
        bad.starts_with("rexecd: ") && bad.contains("UTF-8"),
        "{bad}"
    );

    // HTTP is never run nor answered: the next answer is the next command's.
    let marker = unique_marker("udp-http");
    let http = format!("GET /$(touch /tmp/{marker}) HTTP/1.1\r\nHost: x\r\n\r\n");
    socket
        .send_to(http.as_bytes(), addr(&daemon, "udp"))
        .unwrap();
    assert_eq!(udp_ask(&socket, &daemon, b"echo after"), b"after\n");
    assert!(!Path::new("/tmp").join(&marker).exists());
    assert!(
        daemon
            .log_text()
            .contains("legacy-udp: a datagram starts like an HTTP request line")
    );
}

/// Sends `request` and returns what the dialect answered, read its own way.
fn answer_of(daemon: &Daemon, dialect: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(daemon, dialect);
    stream.write_all(request).unwrap();
    match dialect {
        "raw" => rest_of(&mut stream),
        "length-ready" => read_length_ready(&mut stream),
        "fixed-header" => read_fixed(&mut stream).1,
        other => panic!("no reader for {other}"),
    }
}

#[test]
fn bad_input_gets_an_error_in_each_dialects_own_form() {
    let daemon = dialect_daemon(&["raw", "length-ready", "fixed-header"], &[]);
    for dialect in ["raw", "length-ready", "fixed-header"] {
        let oversized = vec![b'x'; 70_000];
        let answer = String::from_utf8(answer_of(&daemon, dialect, &oversized)).unwrap();
        assert_eq!(
            answer, "rexecd: unframed command is over 65536 bytes; send long commands framed\n",
            "{dialect}"
        );
        let answer = String::from_utf8(answer_of(&daemon, dialect, b"echo \xff\xfe")).unwrap();
        assert!(
            answer.starts_with("rexecd: ") && answer.contains("UTF-8"),
            "{dialect}: {answer}"
        );
    }
}

#[test]
fn http_and_the_grpc_preface_run_nothing_and_close() {
    let daemon = dialect_daemon(&["raw", "length-ready", "fixed-header"], &[]);
    for dialect in ["raw", "length-ready", "fixed-header"] {
        let marker = unique_marker("dialect-http");
        for request in [
            format!("GET /$(touch /tmp/{marker}) HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("touch /tmp/{marker}\nHost: attacker.example\n"),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
        ] {
            let mut stream = connect(&daemon, dialect);
            stream.write_all(request.as_bytes()).unwrap();
            assert_eq!(rest_of(&mut stream), b"", "{dialect}: {request:?}");
        }
        assert!(
            !Path::new("/tmp").join(&marker).exists(),
            "{dialect} ran HTTP"
        );
    }
}

#[test]
fn length_ready_closes_on_anything_but_recv_ready_and_on_a_stalled_client() {
    let daemon = dialect_daemon(&["length-ready"], &["--legacy-idle-timeout", "1s"]);
    let mut stream = connect(&daemon, "length-ready");
    stream.write_all(b"echo secret").unwrap();
    let mut digits = [0u8; 8];
    let n = stream.read(&mut digits).unwrap();
    assert_eq!(&digits[..n], b"7");
    stream.write_all(b"send_it!!!").unwrap();
    assert_eq!(rest_of(&mut stream), b"", "no body without recv_ready");
    assert!(eventually(READ_LIMIT, || {
        daemon
            .log_text()
            .contains(r#"expected recv_ready before the body, got "s"#)
    }));

    // A client that never asks for its body is closed by the idle timeout.
    let mut stalled = connect(&daemon, "length-ready");
    stalled.write_all(b"echo hi").unwrap();
    let n = stalled.read(&mut digits).unwrap();
    assert_eq!(&digits[..n], b"3");
    assert_eq!(rest_of(&mut stalled), b"");
}

#[test]
fn silent_connections_are_closed_and_others_still_served() {
    let daemon = dialect_daemon(
        &["raw", "fixed-header"],
        &["--legacy-first-request-timeout", "1s"],
    );
    let mut silent = connect(&daemon, "raw");
    // Bytes that could begin an HTTP request line, and no more: refused, not run.
    let mut slow = connect(&daemon, "fixed-header");
    slow.write_all(b"G").unwrap();
    assert_eq!(
        answer_of(&daemon, "fixed-header", b"echo meanwhile"),
        b"meanwhile\n"
    );
    assert_eq!(rest_of(&mut silent), b"");
    let (_, body) = read_fixed(&mut slow);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "rexecd: an unframed command that could be the start of an HTTP request is not run; \
         send it framed\n"
    );
}

#[test]
fn the_output_cap_and_the_connection_limit_hold_in_the_dialects() {
    let daemon = dialect_daemon(
        &["raw", "length-ready", "fixed-header"],
        &["--legacy-max-output", "10", "--legacy-max-connections", "1"],
    );
    for dialect in ["raw", "length-ready", "fixed-header"] {
        let marker = unique_marker("dialect-limit");
        let mut busy = connect(&daemon, dialect);
        busy.write_all(format!("sleep 30; echo {marker}").as_bytes())
            .unwrap();
        assert!(eventually(READ_LIMIT, || !processes_matching(&marker).is_empty()));
        let refusal = String::from_utf8(answer_of(&daemon, dialect, b"echo hi")).unwrap();
        assert_eq!(
            refusal, "rexecd: too many legacy connections (limit 1); try again later\n",
            "{dialect}"
        );
        // The client that leaves has its command killed, freeing the slot.
        drop(busy);
        assert!(eventually(READ_LIMIT, || processes_matching(&marker).is_empty()));
    }
    let mut capped = connect(&daemon, "raw");
    capped.write_all(b"echo 0123456789abcdef").unwrap();
    assert_eq!(read_exactly(&mut capped, 10), b"0123456789");
    capped.write_all(b"echo next").unwrap();
    assert_eq!(
        read_exactly(&mut capped, 5),
        b"next\n",
        "nothing past the cap was sent"
    );
}

#[test]
fn udp_refuses_past_the_limit_and_answers_each_source() {
    let daemon = dialect_daemon(&["udp"], &["--legacy-max-connections", "1"]);
    let (first, second) = (udp_socket(), udp_socket());
    let marker = unique_marker("udp-limit");
    first
        .send_to(
            format!("sleep 2; echo {marker}").as_bytes(),
            addr(&daemon, "udp"),
        )
        .unwrap();
    assert!(eventually(READ_LIMIT, || !processes_matching(&marker).is_empty()));
    let refusal = String::from_utf8(udp_ask(&second, &daemon, b"echo hi")).unwrap();
    assert_eq!(
        refusal,
        "rexecd: too many legacy commands running (limit 1); try again later\n"
    );
    assert_eq!(receive(&first), format!("{marker}\n").as_bytes());
    assert_eq!(udp_ask(&second, &daemon, b"echo free"), b"free\n");
}

fn rexecd_refuses(args: &[&str]) -> String {
    let output = output_within(
        Command::new(REXECD)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped()),
        b"",
        READ_LIMIT,
    );
    assert_eq!(output.status.code(), Some(2), "{args:?}");
    assert!(output.stdout.is_empty(), "no readiness line");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn each_dialect_gets_the_legacy_listeners_refusals() {
    // Beside the local token, as for --legacy-listen: an explicit flag or nothing.
    let message = rexecd_refuses(&["--legacy-compat", "raw=127.0.0.1:0"]);
    assert!(
        message.contains("refusing the legacy-raw listener on 127.0.0.1:0")
            && message.contains("--legacy-allow-anonymous"),
        "{message}"
    );
    let message = rexecd_refuses(&[
        "--legacy-allow-anonymous",
        "--legacy-compat",
        "udp=0.0.0.0:0",
    ]);
    assert!(
        message.contains("refusing the legacy-udp listener on non-loopback 0.0.0.0:0")
            && message.contains("--legacy-allow-remote"),
        "{message}"
    );
    let message = rexecd_refuses(&["--legacy-compat", "tcp=127.0.0.1:0"]);
    assert!(
        message.contains("unknown dialect 'tcp'; dialects: raw, length-ready, fixed-header, udp"),
        "{message}"
    );
}

#[test]
fn the_config_file_takes_a_list_of_dialects() {
    let dir = common::scratch_dir("dialect-config");
    let config = dir.join("rexecd.toml");
    std::fs::write(
        &config,
        "legacy-allow-anonymous = true\n\
         legacy-compat = [\"udp=127.0.0.1:0\", \"raw=127.0.0.1:0\"]\n",
    )
    .unwrap();
    let daemon = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let names: Vec<&str> = daemon.compat.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["udp", "raw"]);
    let mut stream = connect(&daemon, "raw");
    stream.write_all(b"echo from-config; exit 3").unwrap();
    assert_eq!(read_exactly(&mut stream, 12), b"from-config\n");
}

/// The header is byte for byte what the tutorial's own `pack_msg_header` packs.
#[test]
fn the_fixed_header_is_the_tutorials_pack_msg_header() {
    let daemon = dialect_daemon(&["fixed-header"], &[]);
    let mut stream = connect(&daemon, "fixed-header");
    stream.write_all(b"echo 12345678901").unwrap();
    let sent = read_exactly(&mut stream, 100);
    let python = "import json\n\
        def pack_msg_header(header,size):\n    \
            bytes_header = bytes(json.dumps(header),encoding='utf-8')\n    \
            fill_up_size = size - len(bytes_header)\n    \
            header['fill'] = header['fill'].zfill(fill_up_size)\n    \
            return bytes(bytes(json.dumps(header),encoding='utf-8'))\n\
        import sys\n\
        sys.stdout.buffer.write(pack_msg_header({'length': 12, 'fill': ''}, 100))\n";
    let packed = output_within(
        Command::new("python3").args(["-c", python]),
        b"",
        READ_LIMIT,
    );
    assert!(
        packed.status.success(),
        "{}",
        String::from_utf8_lossy(&packed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sent),
        String::from_utf8_lossy(&packed.stdout)
    );
    assert_eq!(read_exactly(&mut stream, 12), b"12345678901\n");
}
